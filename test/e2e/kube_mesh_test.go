package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

const (
	// gatewayNamespace holds the east-west Gateways and the links, as the
	// operator's guide puts them.
	gatewayNamespace = "istio-gateways"
	// xdsTLSPort is the port of the east-west gateway's xds-tls listener
	// (the design's 15012): every relay listens on it, each on its own
	// loopback address, so the links carry the port the guide says.
	xdsTLSPort = 15012
	// tokenAudience is what ztunnel's token is minted for (istiod's CA
	// audience, peerd's default --token-audience).
	tokenAudience = "istio-ca"
	// checkWait bounds `peerd check --wait` and the wait for `peerd check`
	// to see a stopped peerd: a failure bound, not a latency assertion.
	checkWait = 60 * time.Second
)

// TestKubernetesMeshEndToEnd is the operator's path on three real API
// servers (issue 9, "end to end"): a shared root from `peerd certs`, three
// `peerd serve --kubeconfig` in Kubernetes mode (as their own service
// account under the documented RBAC, trust domain from the istio
// ConfigMap, Lease holder from POD_NAME), each behind a
// TLS-passthrough relay standing in for its east-west gateway, `peerd
// expose` and `peerd link` through one merged kubeconfig, then what the
// guide promises: a Service labelled global through the API reaches the
// other clusters' ztunnels and is withdrawn when the label goes, `peerd
// unlink` withdraws the peer's services, `peerd check` passes on the healthy
// mesh and names the cluster whose peerd stopped, and ztunnel gets nothing
// without a valid service-account token.
func TestKubernetesMeshEndToEnd(t *testing.T) {
	ctx := withTimeout(t, 4*time.Minute)
	m := startKubeMesh(t, ctx)
	c1, c2, c3 := m.clusters[0], m.clusters[1], m.clusters[2]

	// expose: the CLI writes each cluster's east-west Gateway; the test
	// plays the gateway controller and gives it its address.
	for _, c := range m.clusters {
		m.mustCLI(t, ctx, "expose", "--namespace", gatewayNamespace, "--context", c.Context, "--cluster", c.Name)
		c.addressEastWest(t, ctx)
	}
	// link: every pair, both ways.
	m.mustCLI(t, ctx, "link", "--contexts", m.contexts(), "--namespace", gatewayNamespace)
	for _, from := range m.clusters {
		for _, to := range m.clusters {
			if from != to {
				from.expectLink(t, ctx, to)
			}
		}
	}

	// ztunnel authentication on the TLS listener: nothing without a token,
	// nothing with a token for another audience or from another cluster.
	for what, token := range map[string]string{
		"no token":                        "",
		"a token for another audience":    serviceAccountToken(t, ctx, c1.Kube, "ztunnel", "not-"+tokenAudience),
		"a token from cluster2's API":     serviceAccountToken(t, ctx, c2.Kube, "ztunnel", tokenAudience),
		"a bearer value that is no token": "not-a-token",
	} {
		m.expectUnauthenticated(t, c1, what, token)
	}
	// With a real token (TokenRequest API, audience istio-ca) it gets the
	// mesh: greeter, which only cluster2 has, arrives through the links.
	z1 := m.ztunnel(t, c1, serviceAccountToken(t, ctx, c1.Kube, "ztunnel", tokenAudience))
	z3 := m.ztunnel(t, c3, serviceAccountToken(t, ctx, c3.Kube, "ztunnel", tokenAudience))
	greeter := globalKey("hello", "greeter")
	for _, z := range []*ztunnel.Client{z1, z3} {
		waitSplitHorizon(t, z, greeter, c2)
	}
	waitEndpointClusters(t, z1, globalKey("hello", "echo"), c1.Name, c2.Name, c3.Name)

	// The live state is in the API: every link's Gateway says synced, and
	// every peerd holds its Lease under its pod's name.
	for _, from := range m.clusters {
		from.expectLease(t, ctx, func(l *coordinationv1.Lease) bool { return leaseHeldBy(l, from.podName()) })
		for _, to := range m.clusters {
			if from != to {
				from.expectLinkCondition(t, ctx, to, federation.ConditionSynced, metav1.ConditionTrue)
			}
		}
	}
	// peerd check passes once every link reports synced.
	m.expectCheckHealthy(t, ctx)

	// Label a Service global through the API in cluster2: the other
	// clusters' ztunnels see it with cluster2's split-horizon workload.
	// hello/audit exists unscoped in cluster1 and not at all in cluster3
	// (the state table's "exists, no scope | global" and "none | global").
	audit := globalKey("hello", "audit")
	for _, z := range []*ztunnel.Client{z1, z3} {
		if hasService(z, audit) {
			t.Fatalf("%s is served before hello/audit was labelled global", audit)
		}
	}
	c2.setServiceScope(t, ctx, "hello", "audit", "global")
	for _, z := range []*ztunnel.Client{z1, z3} {
		waitSplitHorizon(t, z, audit, c2)
		waitEndpointClusters(t, z, audit, c2.Name)
	}
	// Remove the label: withdrawn everywhere.
	c2.setServiceScope(t, ctx, "hello", "audit", "")
	for _, z := range []*ztunnel.Client{z1, z3} {
		waitStateFor(t, z, peeringWait, audit+" withdrawn", func(s *ztunnel.State) bool {
			_, ok := s.Services[audit]
			return !ok && len(endpointClusters(s, audit)) == 0
		}, func() string { return fmt.Sprintf("endpoints from %v", endpointClusters(stateOf(z), audit)) })
	}

	// Unlink cluster1 from cluster2 (one way): cluster2's services leave
	// cluster1 and nothing else changes; cluster3 still has them.
	m.mustCLI(t, ctx, "unlink", "--from", c1.Context, "--to", c2.Context, "--namespace", gatewayNamespace)
	if gws := c1.links(t, ctx); len(gws) != 1 || gws[0].Labels[federation.LabelNetwork] != c3.Network {
		t.Fatalf("after unlink, cluster1 holds links %v, want only the one to %s", gatewayNames(gws), c3.Name)
	}
	waitStateFor(t, z1, peeringWait, greeter+" withdrawn from cluster1", func(s *ztunnel.State) bool {
		_, ok := s.Services[greeter]
		return !ok && len(endpointClusters(s, greeter)) == 0
	}, func() string { return fmt.Sprintf("endpoints from %v", endpointClusters(stateOf(z1), greeter)) })
	waitEndpointClusters(t, z1, globalKey("hello", "echo"), c1.Name, c3.Name)
	waitSplitHorizon(t, z3, greeter, c2)

	// Link it again one way, and the mesh is whole and healthy again.
	m.mustCLI(t, ctx, "link", "--from", c1.Context, "--to", c2.Context, "--namespace", gatewayNamespace)
	c1.expectLink(t, ctx, c2)
	waitSplitHorizon(t, z1, greeter, c2)
	m.expectCheckHealthy(t, ctx)

	// Stop cluster3's peerd as the kubelet does (SIGTERM: it gives up its
	// Lease): peerd check reports the broken links, naming cluster3, and
	// fails.
	c3.Peerd.Terminate()
	m.expectCheckReportsBrokenLinks(t, ctx, c3)
	c3.expectLease(t, ctx, func(l *coordinationv1.Lease) bool { return !leaseHeldBy(l, c3.podName()) })
	for _, from := range []*kubeMeshCluster{c1, c2} {
		from.expectLinkCondition(t, ctx, c3, federation.ConditionConnected, metav1.ConditionFalse)
	}
	for _, c := range m.clusters {
		if logs := c.Peerd.Logs(); strings.Contains(strings.ToLower(logs), "forbidden") {
			t.Errorf("%s: peerd was refused something under the documented RBAC:\n%s", c.Name, logs)
		}
	}
}

// kubeMesh is three API servers, their merged kubeconfig, a shared root and
// one peerd per cluster.
type kubeMesh struct {
	clusters   []*kubeMeshCluster
	kubeconfig string // one context per cluster
	pki        string // `peerd certs` output: root-cert.pem, <cluster>/...
}

// kubeMeshCluster is one simulated cluster: its API server, its peerd and
// the relay standing in for its east-west gateway.
type kubeMeshCluster struct {
	mesh.ClusterSpec
	Context string // its context in the merged kubeconfig
	Kube    *kubeharness.Cluster
	// GatewayIP is the east-west gateway's address (status.addresses): the
	// relay listens there on xdsTLSPort and passes TLS through to Listen.
	GatewayIP string
	Relay     *mesh.Relay
	Listen    string // peerd's TLS listener
	Peerd     *peerdProcess
}

// startKubeMesh starts the API servers, applies examples/multicluster and
// the mesh config, and starts every peerd behind its relay; nothing is
// exposed or linked yet.
func startKubeMesh(t *testing.T, ctx context.Context) *kubeMesh {
	t.Helper()
	specs := mesh.ExampleClusters(repoPath("examples", "multicluster"))
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	m := &kubeMesh{pki: peerdCerts(t, strings.Join(names, ","))}
	for i, s := range specs {
		s.TrustDomain = s.Name + ".local"
		c := &kubeMeshCluster{ClusterSpec: s, Context: "c" + strconv.Itoa(i+1),
			Kube: kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})}
		if err := c.Kube.ApplyDir(ctx, s.Manifests); err != nil {
			t.Fatal(err)
		}
		c.writeMeshConfig(t, ctx)
		m.clusters = append(m.clusters, c)
	}
	byContext := map[string]*kubeharness.Cluster{}
	for _, c := range m.clusters {
		byContext[c.Context] = c.Kube
	}
	m.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubeharness.MergedKubeconfig(m.kubeconfig, byContext); err != nil {
		t.Fatal(err)
	}
	m.startRelays(t)
	for _, c := range m.clusters {
		c.Peerd = startPeerd(t, peerdOptions{
			// As installed: its own service account, the documented RBAC.
			Args: []string{"--cluster-name", c.Name, "--kubeconfig", peerdKubeconfig(t, ctx, c.Kube),
				"--ca-dir", filepath.Join(m.pki, c.Name), "--listen", c.Listen,
				"--peer-sync-timeout", "5s", "--drain-duration", "0s"},
			// The downward API gives a pod its name; peerd holds its Lease
			// under it.
			Env: []string{"POD_NAME=" + c.podName()},
		})
	}
	return m
}

// writeMeshConfig writes the istio ConfigMap as istiod's installation does:
// the trust domain comes from there, not from a flag.
func (c *kubeMeshCluster) writeMeshConfig(t *testing.T, ctx context.Context) {
	t.Helper()
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: mesh.SystemNamespace, Name: "istio"},
		Data: map[string]string{"mesh": fmt.Sprintf("trustDomain: %s\nrootNamespace: %s\n",
			c.TrustDomain, mesh.SystemNamespace)},
	}
	if _, err := c.Kube.Kube.CoreV1().ConfigMaps(cm.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("%s: configmap %s/%s: %v", c.Name, cm.Namespace, cm.Name, err)
	}
}

// startRelays gives every cluster's east-west gateway its own loopback
// address, with a relay listening there on xdsTLSPort. The first choice is
// 127.0.0.2, .3, .4; when another run holds one of those, a random
// 127.x.y.0 block is tried, so concurrent runs do not collide.
func (m *kubeMesh) startRelays(t *testing.T) {
	t.Helper()
	for _, c := range m.clusters {
		c.Listen = freePort(t)
	}
	var lastErr error
	for attempt := range 8 {
		base := [3]byte{127, 0, 0}
		if attempt > 0 {
			base = [3]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256))}
		}
		var relays []*mesh.Relay
		for i, c := range m.clusters {
			ip := net.IPv4(base[0], base[1], base[2], byte(2+i)).String()
			r, err := mesh.NewRelayAt(net.JoinHostPort(ip, strconv.Itoa(xdsTLSPort)), c.Listen)
			if err != nil {
				lastErr = err
				break
			}
			relays = append(relays, r)
			c.GatewayIP, c.Relay = ip, r
		}
		if len(relays) == len(m.clusters) {
			t.Cleanup(func() {
				for _, r := range relays {
					r.Close()
				}
			})
			return
		}
		for _, r := range relays {
			r.Close()
		}
	}
	t.Fatalf("no loopback addresses to put the east-west gateways on port %d: %v", xdsTLSPort, lastErr)
}

func (m *kubeMesh) contexts() string {
	var out []string
	for _, c := range m.clusters {
		out = append(out, c.Context)
	}
	return strings.Join(out, ",")
}

// cli runs a peerd command against the merged kubeconfig and returns its
// combined output and exit code (-1 when it did not run to an exit).
func (m *kubeMesh) cli(ctx context.Context, args ...string) (string, int) {
	cmd := exec.CommandContext(ctx, peerdBinary, append(args, "--kubeconfig", m.kubeconfig)...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return string(out), exit.ExitCode()
	default:
		return fmt.Sprintf("%s\n(%v)", out, err), -1
	}
}

// mustCLI runs a peerd command that must succeed.
func (m *kubeMesh) mustCLI(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	if out, code := m.cli(ctx, args...); code != 0 {
		t.Fatalf("peerd %s: exit %d:\n%s", strings.Join(args, " "), code, out)
	}
}

// expectCheckHealthy runs `peerd check --wait` over every context: it must
// exit 0 once the mesh is healthy.
func (m *kubeMesh) expectCheckHealthy(t *testing.T, ctx context.Context) {
	t.Helper()
	// The command's own --timeout says how long to wait; the context only
	// stops a command that ignores it.
	ctx, cancel := context.WithTimeout(ctx, checkWait+10*time.Second)
	defer cancel()
	args := []string{"check", "--contexts", m.contexts(), "--wait", "--timeout", checkWait.String()}
	if out, code := m.cli(ctx, args...); code != 0 {
		t.Fatalf("peerd %s on the healthy mesh: exit %d:\n%s", strings.Join(args, " "), code, out)
	}
}

// expectCheckReportsBrokenLinks runs `peerd check` (without --wait) until
// it exits non-zero and, in the section of every other cluster, reports
// the link to broken as not OK, naming broken (its context, name or
// network); it fails the test if that does not happen within checkWait.
func (m *kubeMesh) expectCheckReportsBrokenLinks(t *testing.T, ctx context.Context, broken *kubeMeshCluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, checkWait)
	defer cancel()
	names := regexp.MustCompile(`\b(` + regexp.QuoteMeta(broken.Context) + `|` + regexp.QuoteMeta(broken.Name) +
		`|` + regexp.QuoteMeta(broken.Network) + `)\b`)
	var out string
	var code int
	err := mesh.Poll(ctx, func() (bool, error) {
		out, code = m.cli(ctx, "check", "--contexts", m.contexts())
		if code <= 0 {
			return false, nil
		}
		sections := checkSections(out)
		for _, c := range m.clusters {
			if c == broken {
				continue
			}
			reported := slices.ContainsFunc(sections[c.Context], func(line string) bool {
				return !strings.HasPrefix(line, checkOK) && strings.Contains(line, "link") && names.MatchString(line)
			})
			if !reported {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("peerd check after %s's peerd stopped: want a non-zero exit and, for every other cluster, its link to %s reported not OK; last exit %d:\n%s",
			broken.Name, broken.Name, code, out)
	}
	t.Logf("peerd check with %s's peerd stopped (exit %d):\n%s", broken.Name, code, out)
}

// checkOK starts the line of a check that passed in `peerd check`'s report.
const checkOK = "✔"

// checkSections splits `peerd check --contexts` output into its per-cluster
// sections: a line without indentation names the context, the indented
// lines under it (trimmed) are its checks.
func checkSections(out string) map[string][]string {
	sections := map[string][]string{}
	var cur string
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.TrimSpace(line) == "":
		case !strings.HasPrefix(line, " "):
			cur = strings.TrimSpace(line)
		case cur != "":
			sections[cur] = append(sections[cur], strings.TrimSpace(line))
		}
	}
	return sections
}

// addressEastWest plays the gateway controller: the east-west Gateway that
// `peerd expose` wrote gets the relay's address in status.addresses.
func (c *kubeMeshCluster) addressEastWest(t *testing.T, ctx context.Context) {
	t.Helper()
	gws := c.gateways(t, ctx, federation.ClassEastWest)
	if len(gws) != 1 {
		t.Fatalf("%s: after peerd expose, %s holds east-west Gateways %v, want one", c.Name, gatewayNamespace, gatewayNames(gws))
	}
	gw := gws[0]
	if got := gw.Labels[federation.LabelNetwork]; got != c.Network {
		t.Errorf("%s: gateway %s/%s: label %s = %q, want %q (the system namespace's)", c.Name, gw.Namespace, gw.Name,
			federation.LabelNetwork, got, c.Network)
	}
	ipType := gatewayv1.IPAddressType
	gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: &ipType, Value: c.GatewayIP}}
	if _, err := c.Kube.Gateway.GatewayV1().Gateways(gw.Namespace).UpdateStatus(ctx, &gw, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("%s: gateway %s/%s: status.addresses: %v", c.Name, gw.Namespace, gw.Name, err)
	}
	if got := gw.Labels[federation.LabelCluster]; got != c.Name {
		t.Errorf("%s: gateway %s/%s: label %s = %q, want %q (expose --cluster)", c.Name, gw.Namespace, gw.Name,
			federation.LabelCluster, got, c.Name)
	}
}

// gateways lists the Gateways of a class in gatewayNamespace.
func (c *kubeMeshCluster) gateways(t *testing.T, ctx context.Context, class string) []gatewayv1.Gateway {
	t.Helper()
	list, err := c.Kube.Gateway.GatewayV1().Gateways(gatewayNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("%s: list gateways: %v", c.Name, err)
	}
	var out []gatewayv1.Gateway
	for _, gw := range list.Items {
		if string(gw.Spec.GatewayClassName) == class {
			out = append(out, gw)
		}
	}
	return out
}

// links lists c's istio-remote Gateways.
func (c *kubeMeshCluster) links(t *testing.T, ctx context.Context) []gatewayv1.Gateway {
	t.Helper()
	return c.gateways(t, ctx, federation.ClassRemote)
}

// expectLink checks that c holds exactly one link to target and that it
// describes target as the guide says: its gateway's address and port, its
// network, cluster and trust domain.
func (c *kubeMeshCluster) expectLink(t *testing.T, ctx context.Context, target *kubeMeshCluster) {
	t.Helper()
	var found []federation.Link
	for _, gw := range c.links(t, ctx) {
		l, err := federation.ParseLink(&gw)
		if err != nil {
			t.Errorf("%s: %v", c.Name, err)
			continue
		}
		if l.Network == target.Network {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d links to network %s, want one: %+v", c.Name, len(found), target.Network, found)
	}
	l := found[0]
	want := fmt.Sprintf("cluster=%s trustDomain=%s dial=%s", target.Name, target.TrustDomain,
		net.JoinHostPort(target.GatewayIP, strconv.Itoa(xdsTLSPort)))
	if got := fmt.Sprintf("cluster=%s trustDomain=%s dial=%s", l.Cluster, l.TrustDomain, l.Dial()); got != want {
		t.Errorf("%s: link %s: %s, want %s", c.Name, l.Gateway, got, want)
	}
	if !slices.Equal(l.Addresses, []string{target.GatewayIP}) {
		t.Errorf("%s: link %s: spec.addresses %v, want [%s]", c.Name, l.Gateway, l.Addresses, target.GatewayIP)
	}
}

func gatewayNames(gws []gatewayv1.Gateway) []string {
	var out []string
	for _, gw := range gws {
		out = append(out, gw.Namespace+"/"+gw.Name)
	}
	return out
}

// setServiceScope sets (or, with "", removes) a Service's
// solo.io/service-scope label through the API, as `kubectl label` does.
func (c *kubeMeshCluster) setServiceScope(t *testing.T, ctx context.Context, ns, name, scope string) {
	t.Helper()
	value := "null"
	if scope != "" {
		value = strconv.Quote(scope)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{"solo.io/service-scope":%s}}}`, value)
	if _, err := c.Kube.Kube.CoreV1().Services(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("%s: service %s/%s: label solo.io/service-scope=%q: %v", c.Name, ns, name, scope, err)
	}
}

// ztunnelCredentials are what ztunnel dials its control plane with: the
// mesh root, the name on istiod's certificate, no client certificate.
func (m *kubeMesh) ztunnelCredentials(t *testing.T) credentials.TransportCredentials {
	t.Helper()
	cfg, err := certs.ClientTLSConfig(filepath.Join(m.pki, "root-cert.pem"), "istiod."+mesh.SystemNamespace+".svc")
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(cfg)
}

// ztunnelConfig is a ztunnel on node-a of c, on c's TLS listener, sending
// token (none when empty).
func (m *kubeMesh) ztunnelConfig(t *testing.T, c *kubeMeshCluster, token string) ztunnel.Config {
	t.Helper()
	return ztunnel.Config{
		Target:      c.Listen,
		ClusterID:   c.Name,
		Network:     c.Network,
		NodeName:    "node-a",
		PodName:     "ztunnel-" + c.Name,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(m.ztunnelCredentials(t))},
		Headers:     map[string]string{"clusterid": c.Name},
		Token:       token,
	}
}

// ztunnel connects a ztunnel-like client to c's TLS listener with token
// and waits until it is ready.
func (m *kubeMesh) ztunnel(t *testing.T, c *kubeMeshCluster, token string) *ztunnel.Client {
	t.Helper()
	return connectZtunnel(t, m.ztunnelConfig(t, c, token))
}

// expectUnauthenticated connects a ztunnel-like client to c's TLS listener
// with token and expects its stream to end with Unauthenticated before it
// received anything.
func (m *kubeMesh) expectUnauthenticated(t *testing.T, c *kubeMeshCluster, what, token string) {
	t.Helper()
	z := ztunnel.New(m.ztunnelConfig(t, c, token))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	done := make(chan error, 1)
	go func() { done <- z.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel client with %s: %v", what, err)
		}
	}()
	var got ztunnel.State
	err := z.WaitFor(ctx, func(s *ztunnel.State) bool {
		got = ztunnel.State{LastError: s.LastError, Responses: s.Responses, Ready: s.Ready}
		return s.LastError != "" || s.Responses > 0
	})
	switch {
	case err != nil:
		t.Errorf("ztunnel client with %s: no answer from %s: %v", what, c.Name, err)
	case got.Responses > 0 || got.Ready:
		t.Errorf("ztunnel client with %s: %s served it (%d responses)", what, c.Name, got.Responses)
	case !strings.Contains(got.LastError, "code = "+codes.Unauthenticated.String()):
		t.Errorf("ztunnel client with %s: stream ended with %q, want code %s", what, got.LastError, codes.Unauthenticated)
	}
}

// waitSplitHorizon waits until z holds the split-horizon workload that
// stands for from's endpoints of the service key: on from's network,
// reached through from's east-west gateway.
func waitSplitHorizon(t *testing.T, z *ztunnel.Client, key string, from *kubeMeshCluster) {
	t.Helper()
	wantGW := from.Network + "/" + from.GatewayIP
	var seen string
	waitStateFor(t, z, peeringWait, fmt.Sprintf("%s: %s's split-horizon workload via %s", key, from.Name, wantGW),
		func(s *ztunnel.State) bool {
			w := splitHorizon(s, key, from.Name)
			if w == nil {
				seen = fmt.Sprintf("none; endpoints from %v", endpointClusters(s, key))
				return false
			}
			seen = fmt.Sprintf("network %s, gateway %s", w.GetNetwork(), gatewayAddress(w))
			return w.GetNetwork() == from.Network && gatewayAddress(w) == wantGW
		}, func() string { return seen })
}

// podName is the name c's peerd runs under (POD_NAME), its Lease's holder.
func (c *kubeMeshCluster) podName() string { return "peerd-" + c.Name }

// expectLease waits until c's peerd Lease satisfies ok.
func (c *kubeMeshCluster) expectLease(t *testing.T, ctx context.Context, ok func(*coordinationv1.Lease) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, checkWait)
	defer cancel()
	var last string
	err := mesh.Poll(ctx, func() (bool, error) {
		l, err := c.Kube.Kube.CoordinationV1().Leases(mesh.SystemNamespace).Get(ctx, kubestate.LeaseName, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("holder %q, renewed %v, duration %ds", ptrValue(l.Spec.HolderIdentity),
			ptrValue(l.Spec.RenewTime), ptrValue(l.Spec.LeaseDurationSeconds))
		return ok(l), nil
	})
	if err != nil {
		t.Fatalf("%s: lease %s/%s: %v (last: %s)", c.Name, mesh.SystemNamespace, kubestate.LeaseName, err, last)
	}
}

// leaseHeldBy reports whether holder holds l and its term has not run out.
func leaseHeldBy(l *coordinationv1.Lease, holder string) bool {
	if ptrValue(l.Spec.HolderIdentity) != holder || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	term := time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	return time.Since(l.Spec.RenewTime.Time) < term
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// expectLinkCondition waits until c's link to target carries the condition
// with that status in its Gateway's status.
func (c *kubeMeshCluster) expectLinkCondition(t *testing.T, ctx context.Context, target *kubeMeshCluster, condType string, want metav1.ConditionStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, checkWait)
	defer cancel()
	var last string
	err := mesh.Poll(ctx, func() (bool, error) {
		last = "no link"
		for _, gw := range c.links(t, ctx) {
			if gw.Labels[federation.LabelNetwork] != target.Network {
				continue
			}
			cond := meta.FindStatusCondition(gw.Status.Conditions, condType)
			if cond == nil {
				last = fmt.Sprintf("gateway %s/%s: no condition %s in %v", gw.Namespace, gw.Name, condType, gw.Status.Conditions)
				return false, nil
			}
			last = fmt.Sprintf("gateway %s/%s: %s=%s reason %s: %s", gw.Namespace, gw.Name, cond.Type, cond.Status, cond.Reason, cond.Message)
			return cond.Status == want, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%s: link to %s: waiting for %s=%s: %v (last: %s)", c.Name, target.Name, condType, want, err, last)
	}
}
