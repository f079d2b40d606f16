package mesh

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// Cluster is one peerd of the mesh with everything it owns. Its addresses
// and directories stay the same across restarts, so a restarted peerd is
// the same cluster to its peers and its clients.
type Cluster struct {
	ClusterSpec
	ConfigDir string // --config-dir: a copy of Manifests plus the links
	CADir     string // --ca-dir: this cluster's intermediate from `peerd certs`
	StateDir  string // --state-dir

	ListenAddr     string // --listen: TLS, for ztunnel and peers
	PlaintextAddr  string // --plaintext-listen
	MonitoringAddr string // --monitoring-listen
	// Relay stands in for this cluster's east-west gateway: links to this
	// cluster dial it, and it passes the bytes through to ListenAddr.
	Relay *Relay

	mesh *Mesh
	logs *logBuffer

	mu   sync.Mutex // guards proc
	proc *process
}

// Args is the full `peerd serve` command line of this cluster.
func (c *Cluster) Args() []string {
	args := []string{"serve",
		"--cluster-name", c.Name,
		"--network", c.Network,
		"--trust-domain", c.TrustDomain,
		"--system-namespace", SystemNamespace,
		"--service-account", ServiceAccount,
		"--config-dir", c.ConfigDir,
		"--ca-dir", c.CADir,
		"--state-dir", c.StateDir,
		"--listen", c.ListenAddr,
		"--plaintext-listen", c.PlaintextAddr,
		"--monitoring-listen", c.MonitoringAddr,
		"--peer-stale-ttl", c.mesh.opts.StaleTTL.String(),
		"--peer-sync-timeout", c.mesh.opts.SyncTimeout.String(),
		// Stops are part of the scenarios: no drain window to wait out.
		"--drain-duration", "0s",
	}
	args = append(args, c.mesh.opts.Args...)
	return append(args, c.ClusterSpec.Args...)
}

func (c *Cluster) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil && c.proc.running() {
		return fmt.Errorf("mesh: cluster %s: peerd is already running", c.Name)
	}
	fmt.Fprintf(c.logs, "=== mesh: starting peerd %s\n", strings.Join(c.Args(), " "))
	p, err := startProcess(c.mesh.opts.Binary, c.Args(), c.logs)
	if err != nil {
		return fmt.Errorf("mesh: cluster %s: %w", c.Name, err)
	}
	c.proc = p
	return nil
}

// Start starts a stopped or killed peerd again (same flags, ports and
// directories) without waiting for it; see WaitReady.
func (c *Cluster) Start() error { return c.start() }

// Restart stops peerd gracefully, starts it again and waits until it is
// ready.
func (c *Cluster) Restart(ctx context.Context) error {
	c.Stop()
	if err := c.start(); err != nil {
		return err
	}
	return c.WaitReady(ctx)
}

// Stop ends peerd with SIGTERM (killing it after a timeout); a no-op when
// it is not running.
func (c *Cluster) Stop() {
	if p := c.current(); p != nil {
		p.stop()
		fmt.Fprintf(c.logs, "=== mesh: peerd stopped\n")
	}
}

// Kill ends peerd's process group with SIGKILL: no drain, no goodbye.
func (c *Cluster) Kill() {
	if p := c.current(); p != nil {
		p.kill()
		fmt.Fprintf(c.logs, "=== mesh: peerd killed\n")
	}
}

// Running reports whether peerd is running.
func (c *Cluster) Running() bool {
	p := c.current()
	return p != nil && p.running()
}

func (c *Cluster) current() *process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc
}

// Logs is everything this cluster's peerd wrote, across restarts.
func (c *Cluster) Logs() string { return c.logs.String() }

// LogMark is a position in the log for LogsSince.
func (c *Cluster) LogMark() int { return c.logs.Len() }

// LogsSince is what peerd wrote after mark.
func (c *Cluster) LogsSince(mark int) string {
	s := c.logs.String()
	if mark > len(s) {
		return ""
	}
	return s[mark:]
}

// WaitReady waits until /readyz answers 200. It fails at once if peerd
// exits, with its log.
func (c *Cluster) WaitReady(ctx context.Context) error {
	p := c.current()
	if p == nil {
		return fmt.Errorf("mesh: cluster %s: peerd was never started", c.Name)
	}
	err := Poll(ctx, func() (bool, error) {
		if !p.running() {
			return false, fmt.Errorf("peerd exited (%v)", p.err)
		}
		code, _, _ := c.Get(ctx, "/readyz")
		return code == http.StatusOK, nil
	})
	if err != nil {
		_, body, _ := c.Get(context.Background(), "/readyz")
		return fmt.Errorf("mesh: cluster %s: waiting for /readyz: %w (last answer %q)\n%s", c.Name, err, body, tail(c.Logs(), 60))
	}
	return nil
}

// Get fetches a path of the monitoring listener.
func (c *Cluster) Get(ctx context.Context, path string) (int, string, error) {
	return httpGet(ctx, "http://"+c.MonitoringAddr+path)
}

// Metric sums the samples of a metric whose line contains every label
// fragment (e.g. `peer="cluster2"`); found is false when none matched.
func (c *Cluster) Metric(ctx context.Context, name string, labelFragments ...string) (value float64, found bool, err error) {
	code, body, err := c.Get(ctx, "/metrics")
	if err != nil {
		return 0, false, err
	}
	if code != http.StatusOK {
		return 0, false, fmt.Errorf("/metrics: status %d", code)
	}
	return ParseMetric(body, name, labelFragments...)
}

// ManifestPath is the path of a file in the config dir.
func (c *Cluster) ManifestPath(name string) string { return filepath.Join(c.ConfigDir, name) }

// ReadManifest returns a config-dir file's content.
func (c *Cluster) ReadManifest(name string) (string, error) {
	b, err := os.ReadFile(c.ManifestPath(name))
	return string(b), err
}

// WriteManifest replaces (or creates) a config-dir file atomically: the
// content is written to a dotfile (which the file source ignores) and
// renamed over the file, so peerd never reads half a file.
func (c *Cluster) WriteManifest(name, content string) error {
	tmp := filepath.Join(c.ConfigDir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.ManifestPath(name))
}

// EditManifest rewrites a config-dir file through edit, atomically. An edit
// that changes nothing is an error: a scenario step that does nothing is a
// bug in the test.
func (c *Cluster) EditManifest(name string, edit func(string) string) error {
	old, err := c.ReadManifest(name)
	if err != nil {
		return err
	}
	updated := edit(old)
	if updated == old {
		return fmt.Errorf("mesh: cluster %s: editing %s changed nothing", c.Name, name)
	}
	return c.WriteManifest(name, updated)
}

// ReplaceInManifest replaces every occurrence of old with new in a
// config-dir file (atomically); it is an error when old does not occur.
func (c *Cluster) ReplaceInManifest(name, old, new string) error {
	return c.EditManifest(name, func(s string) string { return strings.ReplaceAll(s, old, new) })
}

// RemoveManifest deletes a config-dir file.
func (c *Cluster) RemoveManifest(name string) error { return os.Remove(c.ManifestPath(name)) }

// ZtunnelConfig is a ztunnel-like client of this cluster on the given node,
// over the plaintext listener (as a local ztunnel; ztunnel over TLS is
// TLSZtunnelConfig).
func (c *Cluster) ZtunnelConfig(node string) ztunnel.Config {
	return ztunnel.Config{
		Target:    c.PlaintextAddr,
		ClusterID: c.Name,
		Network:   c.Network,
		NodeName:  node,
		PodName:   "ztunnel-" + node,
	}
}

// TLSZtunnelConfig is ZtunnelConfig over the TLS listener, trusting the
// mesh root and presenting no client certificate, as ztunnel does.
func (c *Cluster) TLSZtunnelConfig(node string) (ztunnel.Config, error) {
	tlsConfig, err := certs.ClientTLSConfig(c.mesh.RootCert(), "istiod."+SystemNamespace+".svc")
	if err != nil {
		return ztunnel.Config{}, err
	}
	cfg := c.ZtunnelConfig(node)
	cfg.Target = c.ListenAddr
	cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig))}
	cfg.Headers = map[string]string{"authorization": "Bearer test-token", "clusterid": c.Name}
	return cfg, nil
}

// Poll calls cond every 20ms until it returns true, returns an error, or
// ctx ends (then the error says so). It is the harness's only way to wait:
// no step sleeps for a fixed time.
func Poll(ctx context.Context, cond func() (bool, error)) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
