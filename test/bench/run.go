package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Scenarios the harness runs; each is a series of changes of one kind.
const (
	// ScenarioPod flips one churned pod's Ready condition in its own file and
	// waits for that pod's workload.
	ScenarioPod = "pod"
	// ScenarioSelector flips the mover Service's selector, which moves
	// Cluster.Move pods in or out of it, and waits for all their workloads.
	ScenarioSelector = "selector"
	// ScenarioNodeHeartbeat rewrites a Node with only its heartbeat time
	// changed; ScenarioGatewayStatus a Gateway with only a status
	// condition's time changed. Neither changes any resource: the figure is
	// the responses the clients received anyway and the CPU spent.
	ScenarioNodeHeartbeat = "node-heartbeat"
	ScenarioGatewayStatus = "gateway-status"
)

// Scenarios lists every scenario in the order they run.
var Scenarios = []string{ScenarioPod, ScenarioSelector, ScenarioNodeHeartbeat, ScenarioGatewayStatus}

// Target is a server binary under test.
type Target struct {
	Name   string // how results name it: "peerd", "baseline"
	Binary string
	// Args come before the common flags ("serve" for peerd).
	Args []string
}

// Options of one harness run.
type Options struct {
	Targets []Target
	// Clusters are the sizes to run; Clients the stream counts to run each
	// size with.
	Clusters  []Cluster
	Clients   []int
	Changes   int
	Scenarios []string
	// ChangeTimeout bounds the wait for one change to reach every stream;
	// ReadyTimeout the start of a server and the initial sync of the streams.
	ChangeTimeout time.Duration
	ReadyTimeout  time.Duration
	// Settle is how long the server must use no CPU before the next change
	// (and, after a change that should push nothing, before counting).
	Settle  time.Duration
	WorkDir string
	Log     io.Writer // progress; results are returned
}

// Result is one scenario against one server at one size.
type Result struct {
	Target   string
	Scenario string
	Pods     int
	Services int
	Clients  int
	Changes  int
	Held     int           // resources the probe stream held after the initial sync
	Sync     time.Duration // from the start of the streams until all were synced
	// First and Last are latencies from the rename to the first and the last
	// stream that received every changed resource (zero for scenarios that
	// change no resource).
	First, Last Latency
	// CPU time and bytes allocated by the server, and responses received by
	// all streams together, per change.
	CPUPerChange      time.Duration
	AllocPerChange    float64
	MessagesPerChange float64
	Memory            Memory // after the scenario
	Err               error
}

// Run runs every target on every cluster size with every client count.
func Run(ctx context.Context, o Options) []Result {
	var results []Result
	for _, c := range o.Clusters {
		for _, clients := range o.Clients {
			for _, t := range o.Targets {
				fmt.Fprintf(o.Log, "== %s: %d pods, %d services, %d clients\n", t.Name, c.Pods, c.Services, clients)
				rs := runTarget(ctx, o, t, c, clients)
				for _, r := range rs {
					fmt.Fprintln(o.Log, r.line())
				}
				results = append(results, rs...)
			}
		}
	}
	return results
}

// session is one server with its streams on one freshly written cluster.
type session struct {
	o       Options
	cluster Cluster
	dir     string
	srv     *Server
	fleet   *Fleet
	base    Result
}

func runTarget(ctx context.Context, o Options, t Target, c Cluster, clients int) []Result {
	base := Result{Target: t.Name, Pods: c.Pods, Services: c.Services, Clients: clients, Changes: o.Changes}
	fail := func(err error) []Result {
		base.Err = err
		return []Result{base}
	}
	dir, err := os.MkdirTemp(o.WorkDir, "config-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	if err := c.Write(dir); err != nil {
		return fail(err)
	}
	srv, err := StartServer(t, c.Name, dir, o.WorkDir)
	if err != nil {
		return fail(err)
	}
	defer srv.Stop()
	readyCtx, cancelReady := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancelReady()
	if err := srv.WaitReady(readyCtx); err != nil {
		return fail(err)
	}
	fleet, err := Dial(srv.XDSAddr, clients)
	if err != nil {
		return fail(err)
	}
	streamCtx, stopStreams := context.WithCancel(ctx)
	defer fleet.Close()
	defer stopStreams()
	start := time.Now()
	fleet.Start(streamCtx)
	if err := fleet.WaitSynced(readyCtx); err != nil {
		return fail(err)
	}
	base.Sync = time.Since(start)
	base.Held = fleet.Held()
	s := &session{o: o, cluster: c, dir: dir, srv: srv, fleet: fleet, base: base}
	var out []Result
	for _, sc := range o.Scenarios {
		r := s.run(ctx, sc)
		out = append(out, r)
		if r.Err != nil {
			break // the server or the streams are in an unknown state
		}
	}
	return out
}

// run runs one scenario: o.Changes changes, each after the server has
// settled, with the server's usage taken around the whole series.
func (s *session) run(ctx context.Context, scenario string) Result {
	r := s.base
	r.Scenario = scenario
	step, err := s.scenario(scenario)
	if err != nil {
		r.Err = err
		return r
	}
	if _, err := s.srv.Quiesce(s.o.Settle, 10*time.Second); err != nil {
		r.Err = err
		return r
	}
	before, err := s.srv.Usage()
	if err != nil {
		r.Err = err
		return r
	}
	messages := s.fleet.Messages()
	var first, last []time.Duration
	for k := range s.o.Changes {
		f, l, err := step(ctx, k)
		if err != nil {
			r.Err = fmt.Errorf("%s change %d: %w", scenario, k+1, err)
			return r
		}
		if f > 0 { // steps that should change no resource measure no latency
			first, last = append(first, f), append(last, l)
		}
		if _, err := s.srv.Quiesce(s.o.Settle, 10*time.Second); err != nil {
			r.Err = err
			return r
		}
	}
	after, err := s.srv.Usage()
	if err != nil {
		r.Err = err
		return r
	}
	n := float64(s.o.Changes)
	r.First, r.Last = summarise(first), summarise(last)
	r.CPUPerChange = (after.CPU - before.CPU) / time.Duration(s.o.Changes)
	r.AllocPerChange = (after.AllocBytes - before.AllocBytes) / n
	r.MessagesPerChange = float64(s.fleet.Messages()-messages) / n
	r.Memory, r.Err = s.srv.Memory()
	return r
}

// stepFunc makes change k and returns the latencies to the first and last
// stream, or zeros for a change that should reach no stream.
type stepFunc func(ctx context.Context, k int) (first, last time.Duration, err error)

func (s *session) scenario(name string) (stepFunc, error) {
	switch name {
	case ScenarioPod:
		pods := s.cluster.ChurnPods()
		if len(pods) == 0 {
			return nil, fmt.Errorf("scenario %s: the cluster has no churned pods", name)
		}
		ready := make([]bool, len(pods))
		for i := range ready {
			ready[i] = true
		}
		return func(ctx context.Context, k int) (time.Duration, time.Duration, error) {
			i := k % len(pods)
			ready[i] = !ready[i]
			return s.change(ctx, ChurnFile(pods[i]), func(w io.Writer) { WritePod(w, pods[i], ready[i]) }, []string{s.cluster.UID(pods[i])})
		}, nil
	case ScenarioSelector:
		movers := s.cluster.MoverPods()
		if len(movers) == 0 {
			return nil, fmt.Errorf("scenario %s: the cluster has no pods to move", name)
		}
		names := make([]string, len(movers))
		for i, p := range movers {
			names[i] = s.cluster.UID(p)
		}
		selected := "a"
		return func(ctx context.Context, k int) (time.Duration, time.Duration, error) {
			selected = map[string]string{"a": "b", "b": "a"}[selected]
			return s.change(ctx, MoverFile, func(w io.Writer) { WriteMover(w, selected) }, names)
		}, nil
	case ScenarioNodeHeartbeat:
		return func(ctx context.Context, k int) (time.Duration, time.Duration, error) {
			node := k % s.cluster.Nodes
			return 0, 0, s.noop(NodeFile(node), func(w io.Writer) { WriteNode(w, node, Start.Add(time.Duration(k+1)*time.Minute)) })
		}, nil
	case ScenarioGatewayStatus:
		return func(ctx context.Context, k int) (time.Duration, time.Duration, error) {
			return 0, 0, s.noop(GatewayFile, func(w io.Writer) { WriteGateway(w, s.cluster.network(), Start.Add(time.Duration(k+1)*time.Minute)) })
		}, nil
	}
	return nil, fmt.Errorf("unknown scenario %q (known: %s)", name, strings.Join(Scenarios, ", "))
}

// change replaces file and waits until every stream received names with new
// versions.
func (s *session) change(ctx context.Context, file string, content func(io.Writer), names []string) (time.Duration, time.Duration, error) {
	c, err := s.fleet.Expect(names)
	if err != nil {
		return 0, 0, err
	}
	staged, err := Stage(s.dir, file, content)
	if err != nil {
		return 0, 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, s.o.ChangeTimeout)
	defer cancel()
	s.fleet.Begin(c, time.Now())
	if err := staged.Commit(); err != nil {
		return 0, 0, err
	}
	return s.fleet.Wait(wctx, c)
}

// noop replaces file with content that changes no resource, and gives the
// server time to push anyway: until it has used no CPU for the settle time.
func (s *session) noop(file string, content func(io.Writer)) error {
	staged, err := Stage(s.dir, file, content)
	if err != nil {
		return err
	}
	if err := staged.Commit(); err != nil {
		return err
	}
	_, err = s.srv.Quiesce(s.o.Settle, 10*time.Second)
	return err
}
