package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

const (
	sysNS = "istio-system"
	gwNS  = "istio-gateways"
	ewGW  = "istio-eastwest"

	leaseSeconds = 3600
)

// cli runs peerd commands against a merged kubeconfig of real API servers.
type cli struct {
	t          *testing.T
	kubeconfig string
	clusters   map[string]*kubeharness.Cluster
}

// syncBuffer is written by a running command while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *cli) runWith(stderr *syncBuffer, args ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	if stderr == nil {
		stderr = &syncBuffer{}
	}
	cmd.SetErr(stderr)
	cmd.SetArgs(append(args, "--kubeconfig", c.kubeconfig))
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func (c *cli) run(args ...string) (string, error) {
	c.t.Helper()
	return c.runWith(nil, args...)
}

// ok runs a command that must succeed and returns its output.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("peerd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// fails runs a command that must fail with an error holding every one of
// want, and returns its output and error text.
func (c *cli) fails(args []string, want ...string) (string, string) {
	c.t.Helper()
	out, err := c.run(args...)
	if err == nil {
		c.t.Fatalf("peerd %s succeeded:\n%s", strings.Join(args, " "), out)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			c.t.Errorf("peerd %s: error lacks %q:\n%v", strings.Join(args, " "), w, err)
		}
	}
	return out, err.Error()
}

func (c *cli) gateways(name string) []gatewayv1.Gateway {
	c.t.Helper()
	l, err := c.clusters[name].Gateway.GatewayV1().Gateways(gwNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return l.Items
}

func (c *cli) links(name string) []gatewayv1.Gateway {
	c.t.Helper()
	var out []gatewayv1.Gateway
	for _, gw := range c.gateways(name) {
		if federation.IsRemote(&gw) {
			out = append(out, gw)
		}
	}
	return out
}

func (c *cli) gateway(cluster, name string) *gatewayv1.Gateway {
	c.t.Helper()
	gw, err := c.clusters[cluster].Gateway.GatewayV1().Gateways(gwNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return gw
}

// setAddresses stands in for the gateway controller: it writes the
// east-west Gateway's status addresses.
func (c *cli) setAddresses(cluster string, addrs ...string) {
	c.t.Helper()
	gw := c.gateway(cluster, ewGW)
	gw.Status.Addresses = nil
	for _, a := range addrs {
		gw.Status.Addresses = append(gw.Status.Addresses, gatewayv1.GatewayStatusAddress{Type: federation.AddressType(a), Value: a})
	}
	if _, err := c.clusters[cluster].Gateway.GatewayV1().Gateways(gwNS).UpdateStatus(context.Background(), gw, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// setLease stands in for peerd: its Lease, renewed at renewed. The
// duration is far longer than peerd's 15s so that a slow test never sees a
// Lease expire that it did not mean to expire.
func (c *cli) setLease(cluster, holder string, renewed time.Time) {
	c.t.Helper()
	leases := c.clusters[cluster].Kube.CoordinationV1().Leases(sysNS)
	secs := int32(leaseSeconds)
	spec := coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, RenewTime: &metav1.MicroTime{Time: renewed}}
	cur, err := leases.Get(context.Background(), kubestate.LeaseName, metav1.GetOptions{})
	if err != nil {
		_, err = leases.Create(context.Background(), &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: kubestate.LeaseName}, Spec: spec}, metav1.CreateOptions{})
	} else {
		cur.Spec = spec
		_, err = leases.Update(context.Background(), cur, metav1.UpdateOptions{})
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

// setLinkState stands in for peerd's status writer: the Connected and
// Synced conditions on every link in cluster whose name matches, at the
// link's current generation.
func (c *cli) setLinkState(cluster, linkName string, synced metav1.ConditionStatus, reason, message string) {
	c.t.Helper()
	client := c.clusters[cluster].Gateway.GatewayV1().Gateways(gwNS)
	for _, gw := range c.links(cluster) {
		if linkName != "" && gw.Name != linkName {
			continue
		}
		meta.SetStatusCondition(&gw.Status.Conditions, metav1.Condition{Type: federation.ConditionConnected,
			Status: metav1.ConditionTrue, Reason: federation.ReasonConnected, Message: "connected", ObservedGeneration: gw.Generation})
		meta.SetStatusCondition(&gw.Status.Conditions, metav1.Condition{Type: federation.ConditionSynced,
			Status: synced, Reason: reason, Message: message, ObservedGeneration: gw.Generation})
		if _, err := client.UpdateStatus(context.Background(), &gw, metav1.UpdateOptions{}); err != nil {
			c.t.Fatal(err)
		}
	}
}

func startClusters(t *testing.T, names ...string) *cli {
	t.Helper()
	c := &cli{t: t, kubeconfig: filepath.Join(t.TempDir(), "kubeconfig"), clusters: map[string]*kubeharness.Cluster{}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, n := range names {
		// Start fails the test itself; the clusters come up side by side.
		wg.Go(func() {
			k := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
			mu.Lock()
			c.clusters[n] = k
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(c.clusters) != len(names) {
		t.FailNow()
	}
	contexts := map[string]*kubeharness.Cluster{names[0] + "-again": c.clusters[names[0]]}
	for n, k := range c.clusters {
		contexts[n] = k
	}
	// A second context for the first cluster, as kubeconfigs often have.
	if err := kubeharness.MergedKubeconfig(c.kubeconfig, contexts); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, n := range names {
		k := c.clusters[n]
		for _, ns := range []string{sysNS, gwNS} {
			if _, err := k.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		mesh := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: sysNS},
			Data: map[string]string{"mesh": "trustDomain: " + n + ".local\nrootNamespace: istio-system\n"}}
		if _, err := k.Kube.CoreV1().ConfigMaps(sysNS).Create(ctx, mesh, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *cli) labelNetwork(cluster, network string) {
	c.t.Helper()
	nss := c.clusters[cluster].Kube.CoreV1().Namespaces()
	ns, err := nss.Get(context.Background(), sysNS, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	ns.Labels[federation.LabelNetwork] = network
	if _, err := nss.Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func lines(out, substr string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

func mustContain(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
}

// TestOperatorCLI runs expose, link, unlink and check against three real
// API servers in one merged kubeconfig, standing in for the gateway
// controller (status addresses) and for peerd (its Lease, the link
// conditions).
func TestOperatorCLI(t *testing.T) {
	c := startClusters(t, "c1", "c2", "c3")
	c.labelNetwork("c1", "net1")
	c.labelNetwork("c2", "net2")

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("expose without a network label creates nothing", func(t *testing.T) {
		c.fails([]string{"expose", "--context", "c3"},
			"context c3: namespace istio-system has no label topology.istio.io/network",
			"kubectl --context c3 label namespace istio-system topology.istio.io/network=<network>")
		if gws := c.gateways("c3"); len(gws) != 0 {
			t.Errorf("c3 has %d gateways", len(gws))
		}
	})

	step("expose creates, then leaves unchanged, then repairs", func(t *testing.T) {
		c.labelNetwork("c3", "net3")
		out := c.ok("expose", "--contexts", "c1,c2")
		out += c.ok("expose", "--context", "c3", "--cluster", "cluster3")
		if n := lines(out, "gateway istio-gateways/istio-eastwest created"); n != 3 {
			t.Errorf("%d created, want 3:\n%s", n, out)
		}
		if out := c.ok("expose", "--contexts", "c1,c2"); lines(out, "unchanged") != 2 {
			t.Errorf("second expose:\n%s", out)
		}
		gw := c.gateway("c1", ewGW)
		if gw.Spec.GatewayClassName != federation.ClassEastWest || gw.Labels["istio.io/expose-istiod"] != "15012" || gw.Labels[federation.LabelNetwork] != "net1" {
			t.Errorf("east-west gateway: class %s labels %v", gw.Spec.GatewayClassName, gw.Labels)
		}
		// An operator's edit: a wrong port, a lost label, and a label of
		// their own that expose must keep.
		delete(gw.Labels, "istio.io/expose-istiod")
		gw.Labels["team"] = "mesh"
		gw.Spec.Listeners[1].Port = 15013
		if _, err := c.clusters["c1"].Gateway.GatewayV1().Gateways(gwNS).Update(context.Background(), gw, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		out = c.ok("expose", "--context", "c1")
		mustContain(t, "expose after an edit", out, "c1: gateway istio-gateways/istio-eastwest updated",
			`labels[istio.io/expose-istiod]: set "15012"`, "spec.listeners[xds-tls]: 15013/TLS/Passthrough → 15012/TLS/Passthrough")
		gw = c.gateway("c1", ewGW)
		if gw.Labels["team"] != "mesh" || gw.Spec.Listeners[1].Port != 15012 {
			t.Errorf("after repair: labels %v listeners %+v", gw.Labels, gw.Spec.Listeners)
		}
	})

	step("expose --generate prints what expose applies", func(t *testing.T) {
		out := c.ok("expose", "--generate", "--context", "c2")
		var gw gatewayv1.Gateway
		if err := yaml.UnmarshalStrict([]byte(out), &gw); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		mustContain(t, "generated", out, "apiVersion: gateway.networking.k8s.io/v1", "kind: Gateway", "gatewayClassName: istio-eastwest",
			"topology.istio.io/network: net2", "name: cross-network", "name: xds-tls", "mode: Passthrough")
		if strings.Contains(out, "status") || strings.Contains(out, "creationTimestamp") {
			t.Errorf("generated YAML carries fields a client never sets:\n%s", out)
		}
	})

	step("link before the gateways have addresses creates nothing", func(t *testing.T) {
		_, msg := c.fails([]string{"link", "--contexts", "c1,c2,c3"}, "nothing linked")
		for _, ctx := range []string{"c1", "c2", "c3"} {
			mustContain(t, "error", msg, "context "+ctx+": gateway istio-gateways/istio-eastwest: status.addresses: none yet")
		}
		for _, ctx := range []string{"c1", "c2", "c3"} {
			if l := c.links(ctx); len(l) != 0 {
				t.Errorf("%s has %d links", ctx, len(l))
			}
		}
	})

	c.setAddresses("c1", "172.18.0.1")
	c.setAddresses("c2", "172.18.0.2")
	c.setAddresses("c3", "ew.c3.example.com")

	step("link refuses to link a cluster to itself under another context", func(t *testing.T) {
		c.fails([]string{"link", "--from", "c1", "--to", "c1-again"}, `contexts c1 and c1-again are both cluster "net1"`)
		c.fails([]string{"link", "--contexts", "c1,c2,c1-again"}, `both say they are cluster "net1"`)
		for _, ctx := range []string{"c1", "c2"} {
			if l := c.links(ctx); len(l) != 0 {
				t.Errorf("%s has %d links", ctx, len(l))
			}
		}
	})

	step("link one way", func(t *testing.T) {
		out := c.ok("link", "--from", "c1", "--to", "c2")
		// c2's east-west Gateway has no cluster label: its id is its network.
		mustContain(t, "link", out, "c1: gateway istio-gateways/istio-remote-peer-net2 created")
		got, err := federation.ParseLink(c.gateway("c1", "istio-remote-peer-net2"))
		if err != nil {
			t.Fatal(err)
		}
		want := federation.Link{Gateway: "istio-gateways/istio-remote-peer-net2", Namespace: gwNS, Cluster: "net2", Network: "net2",
			TrustDomain: "c2.local", ServiceAccount: "istio-eastwest-istio-eastwest", Addresses: []string{"172.18.0.2"},
			XDSPort: 15012, HBONEPort: 15008}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("link in c1:\n got %+v\nwant %+v", got, want)
		}
		if l := c.links("c2"); len(l) != 0 {
			t.Errorf("one way, but c2 has %d links", len(l))
		}
	})

	step("link every pair, idempotent", func(t *testing.T) {
		out := c.ok("link", "--contexts", "c1,c2,c3")
		if lines(out, " created") != 5 || lines(out, "c1: gateway istio-gateways/istio-remote-peer-net2 unchanged") != 1 {
			t.Errorf("first link of all pairs:\n%s", out)
		}
		// c3 was exposed with --cluster: links name it by that id.
		mustContain(t, "link", out, "c1: gateway istio-gateways/istio-remote-peer-cluster3 created")
		if out := c.ok("link", "--contexts", "c1,c2,c3"); lines(out, "unchanged") != 6 {
			t.Errorf("second link:\n%s", out)
		}
		l3, err := federation.ParseLink(c.gateway("c2", "istio-remote-peer-cluster3"))
		if err != nil || l3.Cluster != "cluster3" || l3.Network != "net3" || l3.Addresses[0] != "ew.c3.example.com" {
			t.Errorf("link to c3 in c2: %+v %v", l3, err)
		}
		if a := c.gateway("c2", "istio-remote-peer-cluster3").Spec.Addresses[0]; a.Type == nil || *a.Type != gatewayv1.HostnameAddressType {
			t.Errorf("hostname address %+v", a)
		}
	})

	step("a moved address updates the links to it", func(t *testing.T) {
		c.setAddresses("c2", "172.18.1.2", "172.18.1.3")
		out := c.ok("link", "--contexts", "c1,c2,c3")
		for _, from := range []string{"c1", "c3"} {
			mustContain(t, "relink", out, from+": gateway istio-gateways/istio-remote-peer-net2 updated: spec.addresses: [172.18.0.2] → [172.18.1.2 172.18.1.3]")
		}
		if lines(out, "unchanged") != 4 {
			t.Errorf("relink:\n%s", out)
		}
	})

	step("link --generate applied on the other side is what link writes", func(t *testing.T) {
		out := c.ok("link", "--generate", "--context", "c2")
		var gw gatewayv1.Gateway
		if err := yaml.UnmarshalStrict([]byte(out), &gw); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		client := c.clusters["c3"].Gateway.GatewayV1().Gateways(gwNS)
		if err := client.Delete(context.Background(), gw.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Create(context.Background(), &gw, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if out := c.ok("link", "--from", "c3", "--to", "c2"); !strings.Contains(out, "c3: gateway istio-gateways/istio-remote-peer-net2 unchanged") {
			t.Errorf("link after applying the generated YAML:\n%s", out)
		}
	})

	all := []string{"check", "--contexts", "c1,c2,c3"}
	step("check without peerd: links unknown, never OK", func(t *testing.T) {
		out, _ := c.fails(all, "check: ")
		if n := lines(out, "? link"); n != 6 {
			t.Errorf("%d links unknown, want 6:\n%s", n, out)
		}
		mustContain(t, "check", out, "✖ peerd not alive: no Lease peerd", "live state unknown")
		if strings.Contains(out, "all checks passed") || strings.Contains(out, "connected and synced") {
			t.Errorf("check says OK without peerd:\n%s", out)
		}
	})

	for _, n := range []string{"c1", "c2", "c3"} {
		c.setLease(n, "peerd-"+n, time.Now())
		c.setLinkState(n, "", metav1.ConditionTrue, federation.ReasonSynced, "synced")
	}
	step("check healthy", func(t *testing.T) {
		out := c.ok(all...)
		mustContain(t, "check", out, "Summary: 3 cluster(s), all checks passed")
		if n := lines(out, "connected and synced"); n != 6 {
			t.Errorf("%d links synced, want 6:\n%s", n, out)
		}
		c.ok("check", "--context", "c2") // one cluster alone
	})

	step("check: an expired Lease names the cluster", func(t *testing.T) {
		c.setLease("c2", "peerd-c2", time.Now().Add(-2*leaseSeconds*time.Second))
		out, _ := c.fails(all, "check: ")
		mustContain(t, "check", out, "c2\n", "✖ peerd not alive: Lease istio-system/peerd (holder peerd-c2) expired")
		c.setLease("c2", "", time.Now())
		out, _ = c.fails(all)
		mustContain(t, "check", out, "released: peerd stopped")
		c.setLease("c2", "peerd-c2", time.Now())
	})

	step("check: Synced False names the link's cluster, the reason and the message", func(t *testing.T) {
		c.setLinkState("c1", "istio-remote-peer-cluster3", metav1.ConditionFalse, federation.ReasonStale, "no message from the peer since 12:00:00")
		out, _ := c.fails(all, "check: 1 problem(s)")
		mustContain(t, "check", out, "✖ link istio-gateways/istio-remote-peer-cluster3 → c3: peerd.io/Synced=False (Stale): no message from the peer since 12:00:00")
	})

	step("check --wait returns once healthy", func(t *testing.T) {
		stderr := &syncBuffer{}
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := c.runWith(stderr, append(all, "--wait", "--timeout", "90s", "--interval", "100ms")...)
			done <- result{out, err}
		}()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(stderr.String(), "waiting: 1 problem(s)") {
			if time.Now().After(deadline) {
				t.Fatalf("check --wait never reported the problem:\n%s", stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.setLinkState("c1", "istio-remote-peer-cluster3", metav1.ConditionTrue, federation.ReasonSynced, "synced")
		r := <-done
		if r.err != nil || !strings.Contains(r.out, "all checks passed") {
			t.Errorf("check --wait: %v\n%s", r.err, r.out)
		}
	})

	step("check --wait gives up at its timeout with the report", func(t *testing.T) {
		c.setAddresses("c3", "ew2.c3.example.com")
		out, _ := c.fails(append(all, "--wait", "--timeout", "1s", "--interval", "100ms"), "check: ")
		mustContain(t, "check", out, "out of date: addresses [ew.c3.example.com], target has [ew2.c3.example.com]", "fix: peerd link --from c1 --to c3")
	})

	step("unlink one way, then every pair; other gateways untouched", func(t *testing.T) {
		out := c.ok("unlink", "--from", "c1", "--to", "c2")
		mustContain(t, "unlink", out, "c1: gateway istio-gateways/istio-remote-peer-net2 deleted: the link to c2")
		out = c.ok("unlink", "--from", "c1", "--to", "c2")
		mustContain(t, "unlink again", out, "c1: link to c2 not found")
		out = c.ok("unlink", "--contexts", "c1,c2,c3")
		if lines(out, " deleted") != 5 || lines(out, "not found") != 1 {
			t.Errorf("unlink all:\n%s", out)
		}
		for _, n := range []string{"c1", "c2", "c3"} {
			gws := c.gateways(n)
			if len(gws) != 1 || gws[0].Name != ewGW {
				var names []string
				for _, gw := range gws {
					names = append(names, gw.Name)
				}
				t.Errorf("%s after unlink: %v, want only its east-west gateway", n, names)
			}
		}
		out, _ = c.fails(all, "check: ")
		if lines(out, "no link to") != 6 {
			t.Errorf("check after unlink:\n%s", out)
		}
	})
}

// TestClusterCommandFlags: selector mistakes are reported before any
// cluster is contacted.
func TestClusterCommandFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"link", "--from", "a"}, "--from and --to go together"},
		{[]string{"link", "--from", "a", "--to", "a"}, "a cluster is not linked to itself"},
		{[]string{"link", "--contexts", "a"}, "name the clusters"},
		{[]string{"link", "--generate", "--contexts", "a,b"}, "--generate describes one cluster"},
		{[]string{"unlink", "--from", "a", "--to", "b", "--contexts", "a,b"}, "give one"},
		{[]string{"expose", "--contexts", "a,b", "--cluster", "x"}, "--cluster names one cluster"},
		{[]string{"check", "--context", "a", "--contexts", "a,b"}, "give one"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := newRootCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append(tc.args, "--kubeconfig", filepath.Join(t.TempDir(), "none")))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
