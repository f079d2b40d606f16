package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Cluster describes the synthetic cluster written to a config dir: app
// namespaces team-00, team-01, ... in ambient mode, nodes spread over three
// zones of one region, Services spread round-robin over the namespaces and
// pods spread round-robin over the Services, each pod a Ready Deployment
// replica captured by the CNI, as in examples/cluster1.
type Cluster struct {
	Name       string // cluster name: the prefix of workload uids
	Namespaces int
	Nodes      int
	Services   int
	Pods       int // every pod, the churned ones included
	// Churn pods (the last ones) get a file each, so that one pod's manifest
	// can be replaced alone; the others share files of PodsPerFile.
	Churn       int
	PodsPerFile int
	// Move pods of namespace team-00 carry the label MoverLabel, alternately
	// "a" and "b"; the Service "mover" selects one value, and flipping its
	// selector moves all Move pods in or out of it.
	Move int
	// Network is the cluster's network, the label of its system namespace
	// and east-west Gateway ("network1" when empty).
	Network string
	// Global is how many Services, the first ones, are labelled
	// solo.io/service-scope=global: exported to linked clusters.
	Global int
}

// LabelServiceScope marks a Service global (exported to peers) with the
// value "global".
const LabelServiceScope = "solo.io/service-scope"

// network is the cluster's network name.
func (c Cluster) network() string {
	if c.Network == "" {
		return "network1"
	}
	return c.Network
}

// Label and Service of the selector-change scenario.
const (
	MoverLabel   = "bench.peerd.io/mover"
	MoverService = "mover"
	moverNS      = "team-00"
)

// Validate checks that the sizes are consistent.
func (c Cluster) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("cluster: name: required"))
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"namespaces", c.Namespaces}, {"nodes", c.Nodes}, {"services", c.Services}, {"pods", c.Pods}, {"pods per file", c.PodsPerFile}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("cluster: %s: %d, want at least 1", f.name, f.v))
		}
	}
	if c.Services < c.Namespaces {
		errs = append(errs, fmt.Errorf("cluster: services: %d, want at least one per namespace (%d)", c.Services, c.Namespaces))
	}
	if c.Pods > 1<<20 || c.Services > 1<<19 {
		errs = append(errs, fmt.Errorf("cluster: %d pods, %d services: the address plan holds 1,048,576 pods and 524,288 services", c.Pods, c.Services))
	}
	if c.Churn < 0 || c.Churn > c.Pods {
		errs = append(errs, fmt.Errorf("cluster: churn: %d, want 0 to %d (the pod count)", c.Churn, c.Pods))
	}
	if c.Global < 0 || c.Global > c.Services {
		errs = append(errs, fmt.Errorf("cluster: global: %d, want 0 to %d (the service count)", c.Global, c.Services))
	}
	if c.Move < 0 {
		errs = append(errs, fmt.Errorf("cluster: move: %d, want at least 0", c.Move))
	} else if avail := len(c.moverCandidates()); c.Move > avail {
		errs = append(errs, fmt.Errorf("cluster: move: %d, but namespace %s has only %d pods outside the churned ones", c.Move, moverNS, avail))
	}
	return errors.Join(errs...)
}

// Pod is one generated pod.
type Pod struct {
	Index     int
	Namespace string
	Name      string
	Service   int // index of the Service that selects it
	Node      int
	IP        netip.Addr
	Mover     string // MoverLabel value, or ""
}

// UID is the workload uid the pod maps to (its xDS resource name).
func (c Cluster) UID(p Pod) string { return c.Name + "//Pod/" + p.Namespace + "/" + p.Name }

func namespaceName(i int) string { return fmt.Sprintf("team-%02d", i) }
func serviceName(i int) string   { return fmt.Sprintf("svc-%05d", i) }
func nodeName(i int) string      { return fmt.Sprintf("node-%03d", i) }

// serviceNamespace is the namespace of Service s.
func (c Cluster) serviceNamespace(s int) string { return namespaceName(s % c.Namespaces) }

// Pod returns pod i.
func (c Cluster) Pod(i int) Pod {
	s := i % c.Services
	p := Pod{
		Index:     i,
		Namespace: c.serviceNamespace(s),
		// A ReplicaSet's pod name: the Deployment, the template hash and a
		// unique suffix.
		Name:    fmt.Sprintf("%s-7d9f8b6c4d-%06d", serviceName(s), i),
		Service: s,
		Node:    i % c.Nodes,
		// 10.128.0.0/11: pod i is the i-th address.
		IP: netip.AddrFrom4([4]byte{10, byte(128 + i>>16), byte(i >> 8), byte(i)}),
	}
	return p
}

// ChurnPods are the pods that have a file each.
func (c Cluster) ChurnPods() []Pod {
	out := make([]Pod, 0, c.Churn)
	for i := c.Pods - c.Churn; i < c.Pods; i++ {
		out = append(out, c.Pod(i))
	}
	return out
}

// moverCandidates are the indexes of the pods in the mover's namespace that
// are not churned.
func (c Cluster) moverCandidates() []int {
	var out []int
	if c.Namespaces < 1 || c.Services < 1 {
		return nil
	}
	for i := 0; i < c.Pods-c.Churn; i++ {
		if (i%c.Services)%c.Namespaces == 0 {
			out = append(out, i)
		}
	}
	return out
}

// MoveCapacity is the most pods the selector change can move: the pods of
// the mover's namespace that are not churned.
func (c Cluster) MoveCapacity() int { return len(c.moverCandidates()) }

// MoverPods are the pods the mover Service's selector change moves, with
// their label value.
func (c Cluster) MoverPods() []Pod {
	idx := c.moverCandidates()
	out := make([]Pod, 0, c.Move)
	for n := 0; n < c.Move && n < len(idx); n++ {
		p := c.Pod(idx[n])
		p.Mover = moverValue(n)
		out = append(out, p)
	}
	return out
}

func moverValue(n int) string {
	if n%2 == 0 {
		return "a"
	}
	return "b"
}

// moverLabels maps pod index to its mover label value.
func (c Cluster) moverLabels() map[int]string {
	m := make(map[int]string, c.Move)
	for _, p := range c.MoverPods() {
		m[p.Index] = p.Mover
	}
	return m
}

// Files written by Write and rewritten by the scenarios, relative to the
// config dir.
const (
	NamespacesFile = "00-namespaces.yaml"
	GatewayFile    = "gateways/eastwest.yaml"
	MoverFile      = "services/mover.yaml"
)

// NodeFile is the file of node i.
func NodeFile(i int) string { return fmt.Sprintf("nodes/%s.yaml", nodeName(i)) }

// ChurnFile is the file of churned pod p.
func ChurnFile(p Pod) string { return fmt.Sprintf("pods/churn-%06d.yaml", p.Index) }

// Start is the time written into heartbeats and conditions of a fresh
// cluster; the scenarios write later times.
var Start = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// Write writes the cluster's manifests below dir (which must exist).
func (c Cluster) Write(dir string) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := writeFile(dir, NamespacesFile, c.writeNamespaces); err != nil {
		return err
	}
	for i := range c.Nodes {
		if err := writeFile(dir, NodeFile(i), func(w io.Writer) { WriteNode(w, i, Start) }); err != nil {
			return err
		}
	}
	for ns := range c.Namespaces {
		if err := writeFile(dir, fmt.Sprintf("services/%s.yaml", namespaceName(ns)), func(w io.Writer) {
			for s := ns; s < c.Services; s += c.Namespaces {
				c.writeService(w, s)
			}
		}); err != nil {
			return err
		}
	}
	if err := writeFile(dir, MoverFile, func(w io.Writer) { WriteMover(w, "a") }); err != nil {
		return err
	}
	if err := writeFile(dir, GatewayFile, func(w io.Writer) { WriteGateway(w, c.network(), Start) }); err != nil {
		return err
	}
	movers := c.moverLabels()
	bulk := c.Pods - c.Churn
	for first := 0; first < bulk; first += c.PodsPerFile {
		if err := writeFile(dir, fmt.Sprintf("pods/bulk-%05d.yaml", first/c.PodsPerFile), func(w io.Writer) {
			for i := first; i < min(first+c.PodsPerFile, bulk); i++ {
				p := c.Pod(i)
				p.Mover = movers[i]
				WritePod(w, p, true)
			}
		}); err != nil {
			return err
		}
	}
	for _, p := range c.ChurnPods() {
		if err := writeFile(dir, ChurnFile(p), func(w io.Writer) { WritePod(w, p, true) }); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes one file below dir through a buffer.
func writeFile(dir, name string, content func(io.Writer)) error {
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<16)
	content(w)
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// Staged is the new content of a manifest file, written to a temporary file
// next to it, waiting to replace it.
type Staged struct{ tmp, path string }

// Stage prepares an atomic replacement of dir/name, the way tools that
// rewrite a manifest and ConfigMap updates do it: the content goes to a
// temporary file in the same directory (its dot-prefixed name is one the
// file sources skip), and Commit renames it over the file.
func Stage(dir, name string, content func(io.Writer)) (*Staged, error) {
	path := filepath.Join(dir, name)
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := writeFile(filepath.Dir(tmp), filepath.Base(tmp), content); err != nil {
		return nil, err
	}
	return &Staged{tmp: tmp, path: path}, nil
}

// Commit renames the staged file over the old one.
func (s *Staged) Commit() error { return os.Rename(s.tmp, s.path) }

func (c Cluster) writeNamespaces(w io.Writer) {
	// The system namespace names the network, as the operator's guide asks.
	fmt.Fprintf(w, `apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
  labels:
    topology.istio.io/network: %s
`, c.network())
	for i := range c.Namespaces {
		fmt.Fprintf(w, `---
apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels:
    istio.io/dataplane-mode: ambient
    kubernetes.io/metadata.name: %s
`, namespaceName(i), namespaceName(i))
	}
}

// WriteNode writes node i with its topology labels and a Ready condition
// whose heartbeat is at heartbeat: the kubelet rewrites that time every few
// seconds while nothing the mapping reads changes.
func WriteNode(w io.Writer, i int, heartbeat time.Time) {
	zone := fmt.Sprintf("eu-west-1%c", 'a'+i%3)
	ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	fmt.Fprintf(w, `apiVersion: v1
kind: Node
metadata:
  name: %s
  labels:
    kubernetes.io/hostname: %s
    kubernetes.io/os: linux
    node.kubernetes.io/instance-type: m6i.2xlarge
    topology.kubernetes.io/region: eu-west-1
    topology.kubernetes.io/zone: %s
spec:
  podCIDR: 10.244.%d.0/24
status:
  addresses:
  - type: InternalIP
    address: %s
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
    lastHeartbeatTime: %q
    lastTransitionTime: %q
`, nodeName(i), nodeName(i), zone, i%256, ip, heartbeat.Format(time.RFC3339), Start.Format(time.RFC3339))
}

// serviceIP is the ClusterIP of Service s, in 10.96.0.0/12 above 10.96.0.10
// (the DNS Service's usual address).
func serviceIP(s int) netip.Addr {
	n := s + 16
	return netip.AddrFrom4([4]byte{10, byte(96 + n>>16), byte(n >> 8), byte(n)})
}

func (c Cluster) writeService(w io.Writer, s int) {
	name := serviceName(s)
	scope := ""
	if s < c.Global {
		scope = "\n    " + LabelServiceScope + ": global"
	}
	fmt.Fprintf(w, `---
apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
  labels:
    app: %s%s
spec:
  clusterIP: %s
  selector:
    app: %s
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: grpc
    port: 9090
    targetPort: 9090
`, name, c.serviceNamespace(s), name, scope, serviceIP(s), name)
}

// WriteMover writes the mover Service selecting the pods labelled
// MoverLabel=value. Its ClusterIP is outside the range of the other Services.
func WriteMover(w io.Writer, value string) {
	fmt.Fprintf(w, `apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  clusterIP: 10.111.255.250
  selector:
    %s: %s
  ports:
  - name: http
    port: 80
    targetPort: http
`, MoverService, moverNS, MoverLabel, value)
}

// WriteGateway writes the east-west Gateway of network whose status was last
// written at at: the Gateway controller rewrites status conditions while the
// spec stays the same.
func WriteGateway(w io.Writer, network string, at time.Time) {
	fmt.Fprintf(w, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: istio-eastwestgateway
  namespace: istio-system
  labels:
    topology.istio.io/network: %s
    istio.io/expose-istiod: "15012"
spec:
  gatewayClassName: istio-eastwest
  listeners:
  - name: cross-network
    port: 15008
    protocol: HBONE
    tls:
      mode: Passthrough
  - name: xds-tls
    port: 15012
    protocol: TLS
    tls:
      mode: Passthrough
status:
  addresses:
  - type: IPAddress
    value: 172.18.0.10
  conditions:
  - type: Programmed
    status: "True"
    reason: Programmed
    message: Resource programmed
    observedGeneration: 1
    lastTransitionTime: %q
`, network, at.Format(time.RFC3339))
}

// WritePod writes pod p with its Ready condition.
func WritePod(w io.Writer, p Pod, ready bool) {
	app := serviceName(p.Service)
	mover := ""
	if p.Mover != "" {
		mover = fmt.Sprintf("\n    %s: %s", MoverLabel, p.Mover)
	}
	status := "False"
	if ready {
		status = "True"
	}
	fmt.Fprintf(w, `---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  generateName: %s-7d9f8b6c4d-
  namespace: %s
  labels:
    app: %s
    version: v1
    pod-template-hash: 7d9f8b6c4d%s
  annotations:
    ambient.istio.io/redirection: enabled
  ownerReferences:
  - apiVersion: apps/v1
    kind: ReplicaSet
    name: %s-7d9f8b6c4d
    uid: 00000000-0000-4000-8000-%012d
    controller: true
    blockOwnerDeletion: true
spec:
  serviceAccountName: %s
  nodeName: %s
  containers:
  - name: app
    image: registry.example.com/%s:1.4.2
    ports:
    - name: http
      containerPort: 8080
    - name: grpc
      containerPort: 9090
status:
  phase: Running
  hostIP: %s
  podIP: %s
  podIPs:
  - ip: %s
  conditions:
  - type: Ready
    status: %q
`, p.Name, app, p.Namespace, app, mover, app, p.Service, app, nodeName(p.Node), app,
		netip.AddrFrom4([4]byte{10, 0, byte(p.Node >> 8), byte(p.Node)}), p.IP, p.IP, status)
}
