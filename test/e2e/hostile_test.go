package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// The hostile-client suite: each test runs one row of issue 7's table
// against the real binary on loopback, with a bounded load, while a
// well-behaved ztunnel-like client is connected. Each asserts that the
// offender gets a clear status (or is capped), the good client keeps getting
// updates and holds the whole mesh, and peerd's memory stays bounded.

// hostileRSSBound is how far peerd's peak RSS may rise above its resident
// size before the attack. Before the limits, row (a) alone took 54 → 1,030 MB.
const hostileRSSBound = 200 << 20

// hostile is peerd serving a copy of the example mesh to one good client.
type hostile struct {
	p    *peerdProcess
	dir  string
	good *ztunnel.Client
	// revision is the echo-canary workload's current canonical revision,
	// changed by each edit the good client must see.
	revision string
	baseRSS  int64
}

func startHostile(t *testing.T) *hostile {
	t.Helper()
	dir := copyDir(t, repoPath("examples", "cluster1"))
	h := &hostile{dir: dir, revision: "canary"}
	h.p = startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	h.good = connectZtunnel(t, ztunnel.Config{Target: h.p.PlaintextAddr, ClusterID: cluster, Network: "network1"})
	h.baseRSS = h.memory(t, "VmRSS")
	return h
}

// memory reads a size field (VmRSS: now, VmHWM: peak) of peerd's
// /proc/<pid>/status, in bytes.
func (h *hostile) memory(t *testing.T, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s line %q: %v", field, line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, h.p.cmd.Process.Pid)
	return 0
}

// check asserts what every row must leave behind: the good client still
// receives updates and holds exactly the mesh, and peerd's peak memory
// stayed within the bound.
func (h *hostile) check(t *testing.T) {
	t.Helper()
	next := h.revision + "-next"
	edit(t, filepath.Join(h.dir, "10-apps-echo.yaml"), "canonical-revision: "+h.revision+"\n", "canonical-revision: "+next+"\n")
	h.revision = next
	waitState(t, h.good, "the good client receiving an edit made after the attack", func(s *ztunnel.State) bool {
		return s.Workloads["cluster1//Pod/apps/echo-canary"].GetCanonicalRevision() == next
	})
	if diff := cmp.Diff(expectedAddresses(t, h.dir), held(h.good), protocmp.Transform()); diff != "" {
		t.Errorf("the good client lost part of the mesh (-model +client):\n%s", diff)
	}
	if st := h.good.Stats(); st.Streams != 1 {
		t.Errorf("the good client's stream was broken: it opened %d streams", st.Streams)
	}
	peak := h.memory(t, "VmHWM")
	t.Logf("peerd RSS before the attack %d MiB, peak %d MiB", h.baseRSS>>20, peak>>20)
	if peak-h.baseRSS > hostileRSSBound {
		t.Errorf("peerd's peak RSS %d MiB is more than %d MiB above its %d MiB before the attack",
			peak>>20, hostileRSSBound>>20, h.baseRSS>>20)
	}
}

// offender is a raw delta ADS stream on its own connection.
type offender struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	conn   *grpc.ClientConn
}

func (h *hostile) offender(t *testing.T) *offender {
	t.Helper()
	conn := h.conn(t)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(withTimeout(t, waitTimeout))
	if err != nil {
		t.Fatal(err)
	}
	return &offender{t: t, stream: stream, conn: conn}
}

func (h *hostile) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(h.p.PlaintextAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ztunnel.MaxRecvMsgSize)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// flood sends n requests made by req, as fast as the stream takes them,
// without reading; it stops early when the server ends the stream and
// returns how many were sent. It may run on its own goroutine, so it
// returns a failed send (other than the stream's end) instead of failing
// the test.
func (o *offender) flood(n int, req func(i int) *discovery.DeltaDiscoveryRequest) (int, error) {
	for i := 0; i < n; i++ {
		if err := o.stream.Send(req(i)); err != nil {
			if !errors.Is(err, io.EOF) {
				return i, fmt.Errorf("send %d: %w", i, err)
			}
			return i, nil
		}
	}
	return n, nil
}

// floodReading is flood while another goroutine reads every response, as a
// client that does read but asks for too much. It returns how many requests
// were sent and why the stream ended.
func (o *offender) floodReading(n int, req func(i int) *discovery.DeltaDiscoveryRequest) (int, error) {
	o.t.Helper()
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := o.stream.Recv(); err != nil {
				done <- err
				return
			}
		}
	}()
	sent, err := o.flood(n, req)
	if err != nil {
		o.t.Fatal(err)
	}
	return sent, <-done
}

// ended reads until the stream ends and returns why.
func (o *offender) ended() error {
	for {
		if _, err := o.stream.Recv(); err != nil {
			return err
		}
	}
}

// wantStatus checks that err is a gRPC status with code whose message names
// the limit, and that peerd counted it under limit.
func (h *hostile) wantStatus(t *testing.T, err error, code codes.Code, text, limit string) {
	t.Helper()
	if s, ok := status.FromError(err); !ok || s.Code() != code || !strings.Contains(s.Message(), text) {
		t.Fatalf("the offender's stream ended with %v; want %s naming %q", err, code, text)
	}
	h.p.waitMetric(t, 1, "peerd_xds_streams_closed_for_limits_total", `limit="`+limit+`"`)
}

// (a) One client sends 100,000 requests and never reads. Each request
// subscribes the same few long names, so a server that queued them all
// would hold about 800 MB of requests.
func TestHostileFloodWithoutReading(t *testing.T) {
	h := startHostile(t)
	o := h.offender(t)
	long := make([]string, 8)
	for i := range long {
		long[i] = "/" + strings.Repeat(strconv.Itoa(i), 1000)
	}
	// The flood runs on its own: once the server stops reading, Send
	// blocks on flow control, and the status reaches the client only after
	// it reads the responses queued before it.
	type result struct {
		sent int
		err  error
	}
	flooded := make(chan result, 1)
	go func() {
		n, err := o.flood(100_000, func(int) *discovery.DeltaDiscoveryRequest {
			return &discovery.DeltaDiscoveryRequest{TypeUrl: ztunnel.AddressTypeURL, ResourceNamesSubscribe: long}
		})
		flooded <- result{n, err}
	}()
	h.p.waitMetric(t, 1, "peerd_xds_streams_closed_for_limits_total", `limit="queue"`)
	h.wantStatus(t, o.ended(), codes.ResourceExhausted, "requests queued", "queue")
	switch r := <-flooded; {
	case r.err != nil:
		t.Fatal(r.err)
	case r.sent == 100_000:
		t.Errorf("the server took all %d requests of a client that never reads", r.sent)
	default:
		t.Logf("the server ended the stream after %d of 100000 requests", r.sent)
	}
	h.check(t)
}

// (b) One on-demand client subscribes 1,000,000 names, 10,000 a request.
func TestHostileMillionOnDemandNames(t *testing.T) {
	h := startHostile(t)
	o := h.offender(t)
	const batch = 10_000
	sent, err := o.floodReading(1_000_000/batch, func(i int) *discovery.DeltaDiscoveryRequest {
		names := make([]string, batch)
		for j := range names {
			names[j] = fmt.Sprintf("/10.%d.%d", i, j)
		}
		return &discovery.DeltaDiscoveryRequest{TypeUrl: ztunnel.AddressTypeURL, ResourceNamesSubscribe: names}
	})
	h.wantStatus(t, err, codes.ResourceExhausted, "at most 100000 per stream", "names")
	t.Logf("the server ended the stream after %d of %d batches", sent, 1_000_000/batch)
	h.check(t)
}

// (c) One client asks for 100,000 distinct type URLs peerd does not serve.
// Before the limits each became a permanent metric series.
func TestHostileUnknownTypeURLs(t *testing.T) {
	h := startHostile(t)
	_, before := h.p.get("/metrics")
	o := h.offender(t)
	const prefix = "type.googleapis.com/hostile.Type"
	_, err := o.floodReading(100_000, func(i int) *discovery.DeltaDiscoveryRequest {
		return &discovery.DeltaDiscoveryRequest{TypeUrl: prefix + strconv.Itoa(i)}
	})
	h.wantStatus(t, err, codes.InvalidArgument, "type URLs this server does not serve", "unknown_types")
	h.p.waitMetric(t, 16, "peerd_xds_unknown_type_requests_total")
	_, after := h.p.get("/metrics")
	if strings.Contains(after, "hostile.Type") {
		t.Errorf("/metrics carries a client's type URL as a label")
	}
	// A few counters and histogram samples may appear; thousands of series
	// may not.
	if grew := len(after) - len(before); grew > 16<<10 {
		t.Errorf("/metrics grew by %d bytes (%d → %d) after the unknown type URLs", grew, len(before), len(after))
	}
	h.check(t)
}

// (d) A NACK storm: 100,000 NACKs of one response.
func TestHostileNACKStorm(t *testing.T) {
	h := startHostile(t)
	linesBefore := strings.Count(h.p.Logs(), "\n")
	o := h.offender(t)
	if err := o.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ztunnel.AddressTypeURL}); err != nil {
		t.Fatal(err)
	}
	first, err := o.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	sent, err := o.flood(100_000, func(int) *discovery.DeltaDiscoveryRequest {
		return &discovery.DeltaDiscoveryRequest{TypeUrl: ztunnel.AddressTypeURL, ResponseNonce: first.GetNonce(),
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "cluster1//Pod/apps/echo-canary: rejected by the test"}}
	})
	if err != nil {
		t.Fatal(err)
	}
	h.wantStatus(t, o.ended(), codes.InvalidArgument, "more ACKs/NACKs than responses", "replies")
	t.Logf("the server ended the stream after %d of 100000 NACKs", sent)
	// The storm may cost a NACK line, the closing warning and the stream's
	// end, not a line per NACK.
	if lines := strings.Count(h.p.Logs(), "\n") - linesBefore; lines > 20 {
		t.Errorf("the NACK storm wrote %d log lines", lines)
	}
	h.check(t)
}

// (e) 5,000 streams on one connection: the server allows 100 at a time
// (--max-streams-per-connection); grpc-go queues the rest in the client.
func TestHostileStreamsOnOneConnection(t *testing.T) {
	h := startHostile(t)
	conn := h.conn(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var answered atomic.Int64
	for i := 0; i < 5000; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err != nil {
				return
			}
			if s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ztunnel.AddressTypeURL}) != nil {
				return
			}
			if _, err := s.Recv(); err == nil {
				answered.Add(1)
			}
			<-ctx.Done()
		}()
	}
	// Wait until the connection's quota is used up, then sample the gauge
	// while the other 4,900 streams wait in the client.
	const limit = 100 + 1 // the offender's quota plus the good client
	waitFor(t, "100 of the offender's streams answered", func() bool { return answered.Load() >= 100 })
	for i := 0; i < 20; i++ {
		if v, _ := h.p.metric(t, "peerd_xds_connected_streams"); v > limit {
			t.Fatalf("peerd_xds_connected_streams = %v with one offending connection: more than %d", v, limit)
		}
	}
	if n := answered.Load(); n > 100 {
		t.Errorf("%d streams of one connection were served at once; the limit is 100", n)
	}
	h.check(t)
	cancel()
	wg.Wait()
	h.p.waitMetric(t, 1, "peerd_xds_connected_streams")
}

// In file mode the TLS listener authenticates peers by certificate but no
// ztunnel (there is no API server to review tokens with): a client with no
// certificate and no token gets ztunnel's view of the mesh. peerd says so
// at start, in /readyz and as a gauge. (Kubernetes mode reviews tokens:
// kube_tokens_test.go.)
func TestHostileUnauthenticatedTLSClientIsReported(t *testing.T) {
	pki := peerdCerts(t, cluster)
	p := startPeerd(t, peerdOptions{Args: []string{
		"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"),
		"--ca-dir", filepath.Join(pki, cluster), "--listen", freePort(t),
	}})
	waitLogContains(t, p, "no ztunnel authentication on --listen")
	if _, body := p.get("/readyz"); !strings.Contains(body, "ztunnel authentication: none on --listen in file mode") {
		t.Errorf("/readyz does not say that --listen authenticates no client:\n%s", body)
	}
	p.waitMetric(t, 1, "peerd_client_authentication_missing")

	plain := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1")}})
	plain.waitMetric(t, 0, "peerd_client_authentication_missing")
	if strings.Contains(plain.Logs(), "no ztunnel authentication") {
		t.Errorf("peerd without --listen warns about its missing client authentication")
	}
}
