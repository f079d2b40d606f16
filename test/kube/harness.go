package kubeharness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/peerd-mesh/peerd/test/ports"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

const (
	// EnvTools overrides where the binaries are looked up.
	EnvTools = "PEERD_KUBE_TOOLS"
	// EnvRequired turns a missing binary from a skip into a failure (CI).
	EnvRequired = "PEERD_KUBE_REQUIRED"

	// DefaultServiceCIDRs covers the clusterIPs of the project's examples,
	// both families, so dual-stack Services can be created as written.
	DefaultServiceCIDRs = "10.96.0.0/16,fd00:10:96::/112"

	// startTimeout bounds each wait for a process to become healthy; a cold
	// kube-apiserver on a loaded 2-core machine needs well under a minute.
	startTimeout = 90 * time.Second
)

// Options choose what Start sets up beyond a bare API server.
type Options struct {
	// GatewayCRDs installs the Gateway API standard-channel CRDs.
	GatewayCRDs bool
	// ServiceCIDRs is --service-cluster-ip-range; DefaultServiceCIDRs if empty.
	ServiceCIDRs string
}

// Cluster is a running etcd + kube-apiserver pair.
type Cluster struct {
	// Config authenticates as a member of system:masters.
	Config *rest.Config
	// Kubeconfig is a file holding the same credentials, for binaries.
	Kubeconfig string
	Kube       kubernetes.Interface
	Gateway    gatewayclient.Interface
	Dynamic    dynamic.Interface
	// Dir holds the data, credentials and process logs.
	Dir string

	procs []*process
}

// ToolsDir is where hack/kube-tools.sh puts the binaries.
func ToolsDir() string {
	if d := os.Getenv(EnvTools); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "peerd-kube-tools")
	}
	return filepath.Join(home, ".cache", "peerd", "kube-tools")
}

// Binaries returns the paths of etcd and kube-apiserver, or an error naming
// the first one that is missing.
func Binaries() (etcd, apiserver string, err error) {
	dir := ToolsDir()
	etcd = filepath.Join(dir, "etcd")
	apiserver = filepath.Join(dir, "kube-apiserver")
	for _, p := range []string{etcd, apiserver} {
		if _, statErr := os.Stat(p); statErr != nil {
			return "", "", fmt.Errorf("%s: %w", p, statErr)
		}
	}
	return etcd, apiserver, nil
}

// RequireBinaries skips the test when the binaries are missing, with the
// command that builds them, or fails it when EnvRequired is set.
func RequireBinaries(t testing.TB) (etcd, apiserver string) {
	t.Helper()
	etcd, apiserver, err := Binaries()
	if err == nil {
		return etcd, apiserver
	}
	msg := fmt.Sprintf("kube harness binaries missing (%v); build them with: hack/kube-tools.sh", err)
	if os.Getenv(EnvRequired) != "" {
		t.Fatalf("%s (%s is set, so this is a failure, not a skip)", msg, EnvRequired)
	}
	t.Skipf("%s (set %s=1 to make this a failure)", msg, EnvRequired)
	return "", ""
}

// Start runs etcd and kube-apiserver for the lifetime of t, waits until the
// API server reports ready, and returns clients for it.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	etcdBin, apiBin := RequireBinaries(t)
	if opts.ServiceCIDRs == "" {
		opts.ServiceCIDRs = DefaultServiceCIDRs
	}
	c := &Cluster{Dir: t.TempDir()}
	t.Cleanup(func() { c.stop(t) })

	ctx, cancel := context.WithTimeout(context.Background(), 3*startTimeout)
	defer cancel()

	etcdURL, err := c.startEtcd(ctx, etcdBin)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	creds, err := writeCredentials(c.Dir)
	if err != nil {
		t.Fatalf("credentials: %v", err)
	}
	server, err := c.startAPIServer(ctx, apiBin, etcdURL, creds, opts.ServiceCIDRs)
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}

	c.Config = &rest.Config{
		Host:            server,
		BearerToken:     creds.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: creds.caPEM},
		// Tests create objects in bursts; client-go's default 5 QPS would
		// make applying a manifest set take seconds for no reason.
		QPS:   200,
		Burst: 400,
		// Deprecation warnings about what the manifests say (for example
		// trafficDistribution PreferClose) are the point of some examples.
		WarningHandler: rest.NoWarnings{},
	}
	if c.Kube, err = kubernetes.NewForConfig(c.Config); err != nil {
		t.Fatalf("kubernetes client: %v", err)
	}
	if c.Gateway, err = gatewayclient.NewForConfig(c.Config); err != nil {
		t.Fatalf("gateway-api client: %v", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		t.Fatalf("dynamic client: %v", err)
	}
	if c.Kubeconfig, err = writeKubeconfig(c.Dir, server, creds); err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	if opts.GatewayCRDs {
		if err := c.InstallGatewayCRDs(ctx); err != nil {
			t.Fatalf("gateway CRDs: %v", err)
		}
	}
	return c
}

func (c *Cluster) startEtcd(ctx context.Context, bin string) (string, error) {
	// A port taken between freePort and the bind makes the process exit at
	// once; trying again with new ports is cheaper than failing the test.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		clientPort, peerPort := freePort(), freePort()
		if clientPort == 0 || peerPort == 0 {
			return "", errors.New("no free loopback port")
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
		p, err := c.spawn("etcd", bin,
			"--name=harness",
			"--data-dir="+filepath.Join(c.Dir, "etcd-"+strconv.Itoa(attempt)),
			"--listen-client-urls="+clientURL,
			"--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL,
			"--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=harness="+peerURL,
			// Test data is thrown away: durability only costs time.
			"--unsafe-no-fsync",
			"--log-level=warn",
		)
		if err != nil {
			return "", err
		}
		err = waitHealthy(ctx, p, func(ctx context.Context) error {
			return httpCheck(ctx, http.DefaultClient, clientURL+"/health", nil, `"health":"true"`)
		})
		if err == nil {
			return clientURL, nil
		}
		lastErr = err
		if !p.exited() || !p.logContains("address already in use") {
			return "", err
		}
	}
	return "", lastErr
}

func (c *Cluster) startAPIServer(ctx context.Context, bin, etcdURL string, creds *credentials, serviceCIDRs string) (string, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort()
		if port == 0 {
			return "", errors.New("no free loopback port")
		}
		server := "https://127.0.0.1:" + strconv.Itoa(port)
		p, err := c.spawn("kube-apiserver", bin,
			"--etcd-servers="+etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(port),
			"--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"),
			"--tls-cert-file="+creds.certFile,
			"--tls-private-key-file="+creds.keyFile,
			"--token-auth-file="+creds.tokenFile,
			"--authorization-mode=RBAC",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file="+creds.saPubFile,
			"--service-account-signing-key-file="+creds.saKeyFile,
			"--service-cluster-ip-range="+serviceCIDRs,
			// No controller-manager or kubelet: the "kubernetes" Service's
			// endpoints would point at nothing, so nobody maintains them.
			"--endpoint-reconciler-type=none",
			"--allow-privileged=true",
			"--profiling=false",
		)
		if err != nil {
			return "", err
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(creds.caPEM)}}
		header := http.Header{"Authorization": []string{"Bearer " + creds.adminToken}}
		err = waitHealthy(ctx, p, func(ctx context.Context) error {
			return httpCheck(ctx, client, server+"/readyz", header, "ok")
		})
		if err == nil {
			return server, nil
		}
		lastErr = err
		if !p.exited() || !p.logContains("address already in use") {
			return "", err
		}
	}
	return "", lastErr
}

func writeKubeconfig(dir, server string, creds *credentials) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["harness"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: creds.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: creds.adminToken}
	cfg.Contexts["harness"] = &clientcmdapi.Context{Cluster: "harness", AuthInfo: "admin"}
	cfg.CurrentContext = "harness"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", err
	}
	return path, nil
}

// KubeconfigForToken writes a kubeconfig for this cluster that
// authenticates with token (for example a service account's, to run a binary
// under that account's RBAC) and returns its path.
func (c *Cluster) KubeconfigForToken(name, token string) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["harness"] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: c.Config.CAData}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["harness"] = &clientcmdapi.Context{Cluster: "harness", AuthInfo: name}
	cfg.CurrentContext = "harness"
	path := filepath.Join(c.Dir, "kubeconfig-"+name)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", err
	}
	return path, nil
}

// StopAPIServer ends kube-apiserver (etcd keeps running), as when the
// control plane goes away under its clients. The cluster cannot be used
// afterwards.
func (c *Cluster) StopAPIServer() {
	for _, p := range c.procs {
		if p.name == "kube-apiserver" {
			p.terminate(10 * time.Second)
		}
	}
}

// process is one child with its combined output in a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when Wait returns
	err     error         // Wait's result, valid after done
}

func (c *Cluster) spawn(name, bin string, args ...string) (*process, error) {
	return c.spawnIn(name, "", nil, bin, args...)
}

// spawnIn starts bin in dir ("": the test's) with env (nil: the test's).
func (c *Cluster) spawnIn(name, dir string, env []string, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(c.Dir, fmt.Sprintf("%s-%d.log", name, len(c.procs)))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = childAttrs()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) logContains(s string) bool {
	data, err := os.ReadFile(p.logPath)
	return err == nil && bytes.Contains(data, []byte(s))
}

func (p *process) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// terminate asks the process to stop, then kills it if it has not exited
// within the grace period.
func (p *process) terminate(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stop ends the processes in reverse start order (API server before etcd)
// and, when the test failed, shows the end of each log.
func (c *Cluster) stop(t testing.TB) {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].terminate(10 * time.Second)
	}
	if t.Failed() {
		for _, p := range c.procs {
			t.Logf("--- %s log (%s), last lines:\n%s", p.name, p.logPath, p.logTail(40))
		}
	}
}

// waitHealthy polls check until it succeeds, the process exits, or ctx
// (bounded by startTimeout) ends. Polling is the only way to learn that a
// foreign process is ready; the interval is short and the bound generous.
func waitHealthy(ctx context.Context, p *process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	var last error
	for {
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(attemptCtx)
		attemptCancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before becoming healthy; log %s:\n%s", p.name, p.err, p.logPath, p.logTail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy after %s: %v; log %s:\n%s", p.name, startTimeout, last, p.logPath, p.logTail(30))
		case <-ticker.C:
		}
	}
}

func httpCheck(ctx context.Context, client *http.Client, url string, header http.Header, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

// freePort returns an unused loopback port outside the ephemeral range
// (see test/ports); 0 when there is none, which the start functions'
// retries handle like a port taken meanwhile.
func freePort() int {
	addr, err := ports.Free()
	if err != nil {
		return 0
	}
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// goModDownload returns the directory of module@version in the module cache,
// downloading it through the configured proxy if needed.
func goModDownload(ctx context.Context, module, version string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module+"@"+version)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w: %s", module, version, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", module, version, err)
	}
	if info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", module, version, info.Error)
	}
	return info.Dir, nil
}
