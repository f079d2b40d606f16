package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// AddressTypeURL is the only type the clients subscribe to.
const AddressTypeURL = "type.googleapis.com/istio.workload.Address"

// maxRecvMsgSize is above ztunnel's own 200 MiB: a whole mesh of 100,000
// addresses is one initial response of about 40 MB.
const maxRecvMsgSize = 256 << 20

// streamsPerConn is how many streams share one gRPC connection: peerd's
// default --max-streams-per-connection (ztunnels open one each; this is
// the fleet scaled down).
const streamsPerConn = 100

// Change is one change the fleet waits for: the named resources must all
// arrive with a version other than the one held before the change.
type Change struct {
	start   time.Time
	index   map[string]int // resource name -> position in old
	old     []string       // version of each resource before the change
	pending atomic.Int64   // streams that have not received everything yet
	done    chan struct{}  // closed when pending reaches zero
	// latency[i] is set by stream i alone, before it decrements pending.
	latency []time.Duration
}

// Fleet is N ztunnel-like wildcard delta streams for the Address type.
// Stream 0 is also the probe: it keeps the name and version of every
// resource it holds, so that a change knows the versions it must see
// replaced. The others keep nothing but the progress of the current change.
type Fleet struct {
	conns   []*grpc.ClientConn
	streams int

	synced   sync.WaitGroup // one per stream, done at its first response
	wg       sync.WaitGroup
	messages atomic.Int64 // responses received by all streams
	change   atomic.Pointer[Change]

	probeMu sync.Mutex
	probe   map[string]string // name -> version, as held by stream 0

	errMu    sync.Mutex
	errs     int
	firstErr error
}

// Dial opens the connections of a fleet of n streams to target: one per 100
// streams, as ztunnels on many nodes would open one each, scaled down.
func Dial(target string, n int) (*Fleet, error) {
	f := &Fleet{streams: n, probe: map[string]string{}}
	for range (n + streamsPerConn - 1) / streamsPerConn {
		c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Wait for the connection rather than fail fast: on a busy
			// machine a first connect can fail transiently.
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize), grpc.WaitForReady(true)))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("dialing %s: %w", target, err)
		}
		f.conns = append(f.conns, c)
	}
	return f, nil
}

// Start opens the streams; they run until ctx ends.
func (f *Fleet) Start(ctx context.Context) {
	f.synced.Add(f.streams)
	for i := range f.streams {
		f.wg.Add(1)
		go f.run(ctx, i)
	}
}

// WaitSynced waits until every stream received its first response (the
// servers under test send the whole current set in it) or one failed.
func (f *Fleet) WaitSynced(ctx context.Context) error {
	done := make(chan struct{})
	go func() { f.synced.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("streams not synced: %w", ctx.Err())
	}
	return f.Err()
}

// Err reports the streams that failed.
func (f *Fleet) Err() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	if f.errs == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d streams failed; first: %w", f.errs, f.streams, f.firstErr)
}

func (f *Fleet) fail(err error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	f.errs++
	if f.firstErr == nil {
		f.firstErr = err
	}
}

// Close waits for the streams (their context must be done) and closes the
// connections.
func (f *Fleet) Close() {
	f.wg.Wait()
	for _, c := range f.conns {
		c.Close()
	}
}

// Messages is the number of responses all streams received so far.
func (f *Fleet) Messages() int64 { return f.messages.Load() }

// Held is the number of resources the probe stream holds.
func (f *Fleet) Held() int {
	f.probeMu.Lock()
	defer f.probeMu.Unlock()
	return len(f.probe)
}

// WaitHeld waits until the probe stream holds every one of names.
func (f *Fleet) WaitHeld(ctx context.Context, names []string) error {
	for {
		missing := f.missing(names)
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the server does not serve %d of %d resources, e.g. %q: %w", len(missing), len(names), missing[0], errors.Join(ctx.Err(), f.Err()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// missing lists the names the probe stream does not hold.
func (f *Fleet) missing(names []string) []string {
	f.probeMu.Lock()
	defer f.probeMu.Unlock()
	var out []string
	for _, n := range names {
		if _, ok := f.probe[n]; !ok {
			out = append(out, n)
		}
	}
	return out
}

// Expect prepares a change to names: it records the versions the probe
// holds, which every stream must see replaced. Call it when the previous
// change has reached every stream, and before the file is written.
func (f *Fleet) Expect(names []string) (*Change, error) {
	c := &Change{
		index:   make(map[string]int, len(names)),
		old:     make([]string, len(names)),
		done:    make(chan struct{}),
		latency: make([]time.Duration, f.streams),
	}
	f.probeMu.Lock()
	defer f.probeMu.Unlock()
	var missing []string
	for i, n := range names {
		v, ok := f.probe[n]
		if !ok {
			missing = append(missing, n)
		}
		c.index[n] = i
		c.old[i] = v
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the server does not serve %d of the resources the change touches, e.g. %q", len(missing), missing[0])
	}
	return c, nil
}

// Begin publishes c with its start time (the moment of the rename).
func (f *Fleet) Begin(c *Change, start time.Time) {
	c.start = start
	c.pending.Store(int64(f.streams))
	f.change.Store(c)
}

// Wait waits until c reached every stream and returns the latency to the
// first and to the last one.
func (f *Fleet) Wait(ctx context.Context, c *Change) (first, last time.Duration, err error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("the change reached %d of %d streams: %w", int64(f.streams)-c.pending.Load(), f.streams, errors.Join(ctx.Err(), f.Err()))
	}
	first, last = c.latency[0], c.latency[0]
	for _, l := range c.latency {
		first, last = min(first, l), max(last, l)
	}
	return first, last, nil
}

// node is the node a ztunnel sends in its first request.
func node(i int) *core.Node {
	ip := fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255)
	pod := fmt.Sprintf("ztunnel-%05d", i)
	md, _ := structpb.NewStruct(map[string]any{
		"NAME": pod, "NAMESPACE": "istio-system", "INSTANCE_IPS": ip,
		"NODE_NAME": nodeName(i), "CLUSTER_ID": "c1",
	})
	return &core.Node{Id: "ztunnel~" + ip + "~" + pod + ".istio-system~istio-system.svc.cluster.local", Metadata: md}
}

// progress is one stream's view of the current change.
type progress struct {
	change   *Change
	seen     []bool
	count    int
	complete bool
}

func (p *progress) reset(c *Change) {
	p.change, p.count, p.complete = c, 0, false
	if cap(p.seen) >= len(c.old) {
		p.seen = p.seen[:len(c.old)]
		clear(p.seen)
	} else {
		p.seen = make([]bool, len(c.old))
	}
}

func (f *Fleet) run(ctx context.Context, i int) {
	defer f.wg.Done()
	synced := false
	defer func() {
		if !synced {
			f.synced.Done()
		}
	}()
	s, err := discoverypb.NewAggregatedDiscoveryServiceClient(f.conns[i%len(f.conns)]).DeltaAggregatedResources(ctx)
	if err != nil {
		f.fail(fmt.Errorf("stream %d: %w", i, err))
		return
	}
	// Empty subscribe list: wildcard, as ztunnel's first request.
	if err := s.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, Node: node(i)}); err != nil {
		f.fail(fmt.Errorf("stream %d: %w", i, err))
		return
	}
	var p progress
	for {
		resp, err := s.Recv()
		received := time.Now()
		if err != nil {
			if ctx.Err() == nil {
				f.fail(fmt.Errorf("stream %d: %w", i, err))
			}
			return
		}
		f.messages.Add(1)
		if i == 0 {
			f.hold(resp)
		}
		if c := f.change.Load(); c != nil {
			p.observe(c, resp, i, received)
		}
		if err := s.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			if ctx.Err() == nil {
				f.fail(fmt.Errorf("stream %d: ACK: %w", i, err))
			}
			return
		}
		if !synced {
			synced = true
			f.synced.Done()
		}
	}
}

// observe counts the changed resources in resp; when the last one arrived
// it records the stream's latency.
func (p *progress) observe(c *Change, resp *discoverypb.DeltaDiscoveryResponse, stream int, received time.Time) {
	if p.change != c {
		p.reset(c)
	}
	if p.complete {
		return
	}
	for _, r := range resp.GetResources() {
		i, ok := c.index[r.GetName()]
		if !ok || p.seen[i] || r.GetVersion() == c.old[i] {
			continue
		}
		p.seen[i] = true
		p.count++
	}
	if p.count < len(c.old) {
		return
	}
	p.complete = true
	c.latency[stream] = received.Sub(c.start)
	if c.pending.Add(-1) == 0 {
		close(c.done)
	}
}

// hold updates the probe's name -> version map.
func (f *Fleet) hold(resp *discoverypb.DeltaDiscoveryResponse) {
	f.probeMu.Lock()
	defer f.probeMu.Unlock()
	for _, r := range resp.GetResources() {
		f.probe[r.GetName()] = r.GetVersion()
	}
	for _, n := range resp.GetRemovedResources() {
		delete(f.probe, n)
	}
}
