package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubeyaml"
)

// Link is how one peerd reaches a peer: an istio-remote Gateway in its
// config dir.
type Link struct {
	Cluster, Network string
	// Port is the peer's --listen (TLS) port on 127.0.0.1.
	Port int
}

// LinkFile is the file, relative to a config dir, of the link to cluster.
func LinkFile(cluster string) string { return "links/" + cluster + ".yaml" }

// WriteLink writes l as an istio-remote Gateway, as an operator links two
// clusters (federation.RenderLink, the one writer of link Gateways): the
// peer's network and cluster, its east-west gateway's service account, its
// address and the ports of its HBONE and xDS listeners.
func WriteLink(w io.Writer, l Link) {
	b, err := kubeyaml.Marshal(federation.RenderLink(federation.Link{
		Gateway:        "istio-gateways/" + l.Cluster,
		Namespace:      "istio-gateways",
		Cluster:        l.Cluster,
		Network:        l.Network,
		ServiceAccount: "istio-eastwest",
		Addresses:      []string{"127.0.0.1"},
		XDSPort:        uint32(l.Port),
		HBONEPort:      federation.DefaultHBONEPort,
	}))
	if err != nil {
		// A Gateway built from strings and numbers always marshals.
		panic(fmt.Sprintf("bench: link to %s: %v", l.Cluster, err))
	}
	// The writer is Stage's buffered one: a failed write comes back from its Flush.
	_, _ = w.Write(b)
}

// SplitHorizonUID is the workload uid under which importer serves the
// capacity of a global Service ns/name in the remote cluster exporter.
func SplitHorizonUID(importer, exporter, ns, name string) string {
	return importer + "/peerd/SplitHorizon/" + exporter + "/" + ns + "/" + name
}

// MeshOptions describe a mesh of real peerd processes on loopback.
type MeshOptions struct {
	Peerd string // the peerd binary
	// Clusters get one peerd each; their names and networks must differ.
	Clusters     []Cluster
	WorkDir      string // config dirs, certificates, state and logs go below it
	ReadyTimeout time.Duration
	// NoState runs the peerds without --state-dir: no link state is saved.
	NoState bool
}

// Peer is one cluster of a mesh and its peerd.
type Peer struct {
	Cluster Cluster
	Dir     string // its --config-dir
	Server  *Server
	port    int // of its --listen (TLS) address
}

// Mesh is one peerd per cluster, unlinked until Link.
type Mesh struct {
	Peers []*Peer
}

// StartMesh writes each cluster, issues the clusters' intermediate CAs
// under one root with `peerd certs`, starts a peerd on each (TLS listener,
// --ca-dir, --state-dir) and waits until all are ready. The peers are not
// linked yet.
func StartMesh(ctx context.Context, o MeshOptions) (*Mesh, error) {
	names := make([]string, len(o.Clusters))
	seen := map[string]bool{}
	for i, c := range o.Clusters {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		if seen[c.Name] || seen["network:"+c.network()] {
			return nil, fmt.Errorf("cluster %s: name or network %s used twice", c.Name, c.network())
		}
		seen[c.Name], seen["network:"+c.network()] = true, true
		names[i] = c.Name
	}
	pki := filepath.Join(o.WorkDir, "pki")
	if out, err := exec.CommandContext(ctx, o.Peerd, "certs", "--out", pki, "--clusters", strings.Join(names, ",")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("peerd certs: %w: %s", err, out)
	}
	m := &Mesh{}
	for _, c := range o.Clusters {
		p, err := startPeer(o, c, pki)
		if err != nil {
			m.Stop()
			return nil, err
		}
		m.Peers = append(m.Peers, p)
	}
	readyCtx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	for _, p := range m.Peers {
		if err := p.Server.WaitReady(readyCtx); err != nil {
			m.Stop()
			return nil, err
		}
	}
	return m, nil
}

func startPeer(o MeshOptions, c Cluster, pki string) (*Peer, error) {
	dir := filepath.Join(o.WorkDir, c.Name, "config")
	state := filepath.Join(o.WorkDir, c.Name, "state")
	for _, d := range []string{dir, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := c.Write(dir); err != nil {
		return nil, err
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, portText, _ := net.SplitHostPort(listen)
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("free address %s: %w", listen, err)
	}
	t := Target{Name: "peerd-" + c.Name, Binary: o.Peerd, Args: []string{"serve", "--ca-dir", filepath.Join(pki, c.Name)}}
	if !o.NoState {
		t.Args = append(t.Args, "--state-dir", state)
	}
	srv, err := startServer(t, c.Name, dir, o.WorkDir, listen)
	if err != nil {
		return nil, err
	}
	return &Peer{Cluster: c, Dir: dir, Server: srv, port: port}, nil
}

// Stop stops every peerd.
func (m *Mesh) Stop() {
	for _, p := range m.Peers {
		p.Server.Stop()
	}
}

// Link writes, in every peer's config dir, a link to every other peer, each
// file replaced atomically.
func (m *Mesh) Link() error {
	for _, p := range m.Peers {
		for _, q := range m.Peers {
			if p == q {
				continue
			}
			l := Link{Cluster: q.Cluster.Name, Network: q.Cluster.network(), Port: q.port}
			staged, err := Stage(p.Dir, LinkFile(q.Cluster.Name), func(w io.Writer) { WriteLink(w, l) })
			if err != nil {
				return err
			}
			if err := staged.Commit(); err != nil {
				return err
			}
		}
	}
	return nil
}

// WaitLinked waits until every peer's /debug/peers shows a synced link to
// every other peer holding all of that peer's global Services.
func (m *Mesh) WaitLinked(ctx context.Context) error {
	for _, p := range m.Peers {
		want := map[string]int{}
		for _, q := range m.Peers {
			if q != p {
				want[q.Cluster.Name] = q.Cluster.Global
			}
		}
		var last string
		for {
			code, body, err := p.Server.get("/debug/peers")
			if err == nil && code == http.StatusOK {
				var done bool
				done, last, err = linksSynced([]byte(body), want)
				if err != nil {
					return fmt.Errorf("%s /debug/peers: %w", p.Server.Name, err)
				}
				if done {
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: links not synced (%s): %w", p.Server.Name, last, ctx.Err())
			case <-p.Server.exited:
				return fmt.Errorf("%s exited (%v); log: %s\n%s", p.Server.Name, p.Server.waitErr, p.Server.logPath, p.Server.logTail())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// linkStatus is the part of a /debug/peers entry the harness reads.
type linkStatus struct {
	Cluster  string `json:"cluster"`
	State    string `json:"state"`
	Services int    `json:"services"`
}

// linksSynced reports whether the /debug/peers document body shows a synced
// link to every cluster of want holding want[cluster] services, and if not,
// which link is behind.
func linksSynced(body []byte, want map[string]int) (bool, string, error) {
	var links []linkStatus
	if err := json.Unmarshal(body, &links); err != nil {
		return false, "", err
	}
	got := map[string]linkStatus{}
	for _, l := range links {
		got[l.Cluster] = l
	}
	for cluster, services := range want {
		l, ok := got[cluster]
		switch {
		case !ok:
			return false, "no link to " + cluster, nil
		case l.State != "synced" || l.Services != services:
			return false, fmt.Sprintf("link to %s: %s with %d services, want synced with %d", cluster, l.State, l.Services, services), nil
		}
	}
	return true, "", nil
}

// HeapAfterGC is the server's Go heap in use right after a garbage
// collection, with the heap profile taken then: /debug/pprof/heap?gc=1
// collects and returns the profile, then /metrics reports
// go_memstats_heap_inuse_bytes.
func (s *Server) HeapAfterGC() (uint64, []byte, error) {
	code, profile, err := s.get("/debug/pprof/heap?gc=1")
	if err != nil || code != http.StatusOK {
		return 0, nil, fmt.Errorf("%s /debug/pprof/heap: status %d, %v", s.Name, code, err)
	}
	v, err := s.metric("go_memstats_heap_inuse_bytes")
	return uint64(v), []byte(profile), err
}

// metric reads one unlabelled sample from /metrics.
func (s *Server) metric(name string) (float64, error) {
	code, body, err := s.get("/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("%s /metrics: status %d", s.Name, code)
	}
	v, err := metricValue(body, name)
	if err != nil {
		return 0, fmt.Errorf("%s /metrics: %w", s.Name, err)
	}
	return v, nil
}

// Profile collects a CPU profile of seconds from /debug/pprof/profile.
func (s *Server) Profile(seconds int) ([]byte, error) {
	code, body, err := s.get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds))
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("%s /debug/pprof/profile: status %d: %s", s.Name, code, body)
	}
	return []byte(body), nil
}

// quiesceAll waits until no server has used CPU for window, or limit has
// passed: the servers share the machine, so one's work slows another's
// change.
func quiesceAll(servers []*Server, window, limit time.Duration) error {
	const poll = 10 * time.Millisecond
	last := make([]time.Duration, len(servers))
	for i, s := range servers {
		v, err := s.CPU()
		if err != nil {
			return err
		}
		last[i] = v
	}
	start, quietSince := time.Now(), time.Now()
	for time.Since(start) < limit && time.Since(quietSince) < window {
		time.Sleep(poll)
		for i, s := range servers {
			v, err := s.CPU()
			if err != nil {
				return err
			}
			if v != last[i] {
				last[i], quietSince = v, time.Now()
			}
		}
	}
	return nil
}

// ConvergenceOptions are the measurement of a mesh: Changes readiness flips
// in the first cluster (the exporter), watched by Clients ztunnel-like
// streams on the second (the importer).
type ConvergenceOptions struct {
	Changes       int
	Clients       int
	ChangeTimeout time.Duration
	Settle        time.Duration // all peerds CPU-quiet before each change
	// Drain is how long every peerd must be CPU-quiet after the last change
	// before the CPU is read: work a change defers (peerd saves a changed
	// link's state at most once per second) belongs to the changes.
	Drain time.Duration
	// Profile, when set, receives the importer's CPU profile of
	// ProfileSeconds taken from the first change on.
	Profile        io.Writer
	ProfileSeconds int
}

// ConvergenceResult is one mesh's figures.
type ConvergenceResult struct {
	Name     string
	Clusters int
	Exporter Cluster // the first cluster, whose pods change
	Importer Cluster // the second, whose streams watch
	// Imported is the (cluster, service) pairs the importer imports.
	Imported int
	// Link is from writing the link files to every link synced in every
	// peer.
	Link time.Duration
	// Latency is from the rename of the pod's file in the exporter to the
	// last importer stream holding the new split-horizon workload.
	Latency Latency
	// CPU per change of the importer and of the exporter.
	ImporterCPU, ExporterCPU time.Duration
	// InImporter is the mean of the importer's
	// peerd_peer_convergence_seconds over the changes: from the update's
	// arrival to its push.
	InImporter time.Duration
	// Importer's heap after a GC before and after linking, and its RSS
	// after linking.
	HeapUnlinked, HeapLinked uint64
	// The heap profiles taken with them: `go tool pprof -top -base
	// unlinked linked` shows where the imports' memory goes.
	HeapProfileUnlinked, HeapProfileLinked []byte
	RSS                                    uint64
	Err                                    error
}

// HeapPerImport is the importer's heap growth from linking, per imported
// (cluster, service).
func (r ConvergenceResult) HeapPerImport() float64 {
	if r.Imported == 0 {
		return 0
	}
	return (float64(r.HeapLinked) - float64(r.HeapUnlinked)) / float64(r.Imported)
}

// RunConvergence starts the mesh, links it, and measures: the importer's
// heap before and after linking, then Changes readiness flips of the
// exporter's churned pods, each changing the exported capacity of one
// global Service, timed to the importer's streams.
func RunConvergence(ctx context.Context, name string, o MeshOptions, co ConvergenceOptions) ConvergenceResult {
	r := ConvergenceResult{Name: name, Clusters: len(o.Clusters)}
	if len(o.Clusters) < 2 {
		r.Err = errors.New("a mesh needs at least two clusters")
		return r
	}
	r.Exporter, r.Importer = o.Clusters[0], o.Clusters[1]
	for i, c := range o.Clusters {
		if i != 1 { // the importer's own are not imported
			r.Imported += c.Global
		}
	}
	churn := r.Exporter.ChurnPods()
	if len(churn) == 0 {
		r.Err = fmt.Errorf("cluster %s: no churned pods to change", r.Exporter.Name)
		return r
	}
	for _, p := range churn {
		if p.Service >= r.Exporter.Global {
			r.Err = fmt.Errorf("cluster %s: churned pod %s is in %s, which is not global", r.Exporter.Name, p.Name, serviceName(p.Service))
			return r
		}
	}
	m, err := StartMesh(ctx, o)
	if err != nil {
		r.Err = err
		return r
	}
	defer m.Stop()
	r.Err = r.measure(ctx, m, o, co, churn)
	return r
}

func (r *ConvergenceResult) measure(ctx context.Context, m *Mesh, o MeshOptions, co ConvergenceOptions, churn []Pod) error {
	exporter, importer := m.Peers[0], m.Peers[1]
	servers := make([]*Server, len(m.Peers))
	for i, p := range m.Peers {
		servers[i] = p.Server
	}
	var err error
	if r.HeapUnlinked, r.HeapProfileUnlinked, err = importer.Server.HeapAfterGC(); err != nil {
		return err
	}
	readyCtx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	start := time.Now()
	if err := m.Link(); err != nil {
		return err
	}
	if err := m.WaitLinked(readyCtx); err != nil {
		return err
	}
	r.Link = time.Since(start)

	fleet, err := Dial(importer.Server.XDSAddr, co.Clients)
	if err != nil {
		return err
	}
	streamCtx, stopStreams := context.WithCancel(ctx)
	defer fleet.Close()
	defer stopStreams()
	fleet.Start(streamCtx)
	if err := fleet.WaitSynced(readyCtx); err != nil {
		return err
	}
	// Every split-horizon workload must reach the streams before anything
	// is measured: the proof that the mesh imports all it should.
	var imported []string
	for _, p := range m.Peers {
		if p == importer {
			continue
		}
		for s := range p.Cluster.Global {
			imported = append(imported, SplitHorizonUID(importer.Cluster.Name, p.Cluster.Name, p.Cluster.serviceNamespace(s), serviceName(s)))
		}
	}
	if err := fleet.WaitHeld(readyCtx, imported); err != nil {
		return err
	}
	if r.HeapLinked, r.HeapProfileLinked, err = importer.Server.HeapAfterGC(); err != nil {
		return err
	}

	if err := quiesceAll(servers, co.Settle, 30*time.Second); err != nil {
		return err
	}
	impBefore, err := importer.Server.CPU()
	if err != nil {
		return err
	}
	expBefore, err := exporter.Server.CPU()
	if err != nil {
		return err
	}
	sumBefore, countBefore, err := convergenceSums(importer.Server)
	if err != nil {
		return err
	}
	profDone := make(chan error, 1)
	if co.Profile != nil {
		go func() {
			data, err := importer.Server.Profile(co.ProfileSeconds)
			if err == nil {
				_, err = co.Profile.Write(data)
			}
			profDone <- err
		}()
	} else {
		profDone <- nil
	}
	ready := make([]bool, len(churn))
	for i := range ready {
		ready[i] = true
	}
	var samples []time.Duration
	for k := range co.Changes {
		i := k % len(churn)
		ready[i] = !ready[i]
		p := churn[i]
		uid := SplitHorizonUID(importer.Cluster.Name, exporter.Cluster.Name, p.Namespace, serviceName(p.Service))
		c, err := fleet.Expect([]string{uid})
		if err != nil {
			return fmt.Errorf("change %d: %w", k+1, err)
		}
		staged, err := Stage(exporter.Dir, ChurnFile(p), func(w io.Writer) { WritePod(w, p, ready[i]) })
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, co.ChangeTimeout)
		fleet.Begin(c, time.Now())
		if err := staged.Commit(); err != nil {
			cancel()
			return err
		}
		_, last, err := fleet.Wait(wctx, c)
		cancel()
		if err != nil {
			return fmt.Errorf("change %d (pod %s/%s ready=%t, workload %s): %w", k+1, p.Namespace, p.Name, ready[i], uid, err)
		}
		samples = append(samples, last)
		if err := quiesceAll(servers, co.Settle, 10*time.Second); err != nil {
			return err
		}
	}
	if err := quiesceAll(servers, co.Drain, 30*time.Second); err != nil {
		return err
	}
	impAfter, err := importer.Server.CPU()
	if err != nil {
		return err
	}
	expAfter, err := exporter.Server.CPU()
	if err != nil {
		return err
	}
	sumAfter, countAfter, err := convergenceSums(importer.Server)
	if err != nil {
		return err
	}
	n := time.Duration(co.Changes)
	r.Latency = summarise(samples)
	r.ImporterCPU, r.ExporterCPU = (impAfter-impBefore)/n, (expAfter-expBefore)/n
	if countAfter > countBefore {
		r.InImporter = time.Duration((sumAfter - sumBefore) / (countAfter - countBefore) * float64(time.Second))
	}
	mem, err := importer.Server.Memory()
	if err != nil {
		return err
	}
	r.RSS = mem.RSS
	return <-profDone
}

// convergenceSums reads the sum and count of the server's
// peerd_peer_convergence_seconds histogram.
func convergenceSums(s *Server) (sum, count float64, err error) {
	if sum, err = s.metric("peerd_peer_convergence_seconds_sum"); err != nil {
		return 0, 0, err
	}
	count, err = s.metric("peerd_peer_convergence_seconds_count")
	return sum, count, err
}
