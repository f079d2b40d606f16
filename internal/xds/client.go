package xds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
)

// ClientMaxRecvMsgSize is the default receive limit of a Client: ztunnel's
// own (200 MiB). grpc-go's 4 MiB default is far below a whole mesh's
// initial response.
const ClientMaxRecvMsgSize = 200 << 20

// DefaultClientKeepalive are the keepalive pings a Client uses when
// ClientOptions.Keepalive is zero. Time is above the 15 s minimum that
// peerd's server enforces between pings (internal/serve): a client that
// pings an idle stream more often is disconnected with "too_many_pings". A
// blackholed path is detected within Time + Timeout of going silent.
var DefaultClientKeepalive = keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}

// DefaultBackoff is the reconnect backoff when ClientOptions.Backoff is zero.
var DefaultBackoff = Backoff{Initial: 100 * time.Millisecond, Max: 30 * time.Second}

// ClientOptions configure one Client. Dial and TypeURLs are required; every
// other field may be left zero.
type ClientOptions struct {
	// Dial opens a connection; it is called for every (re)connect, and the
	// connection is closed when that stream ends. opts are the Client's own
	// dial options (keepalive) and must be passed on to grpc.NewClient;
	// DialTarget builds such a func. Tests pass a loopback dialer, peer
	// links mTLS credentials.
	Dial func(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error)
	// Conn, when set, is used instead of Dial: a connection the caller owns
	// (the CLI's), which the Client neither dials nor closes. Its own dial
	// and call options apply: no keepalive is added, nor MaxRecvMsgSize
	// unless that field is set.
	Conn grpc.ClientConnInterface
	// TypeURLs are subscribed as wildcard, one initial request each.
	TypeURLs []string
	// Node is sent on each initial request.
	Node *corev3.Node
	// Resume is state to start from, by type URL (say, what a previous run
	// persisted): the first stream lists it in initial_resource_versions,
	// so the server sends only what changed and removes what is gone. An
	// entry may carry only Name and Version (a caller that keeps the
	// bodies itself); Resources then shows it without a body until the
	// server sends a new version. Types not in TypeURLs are ignored.
	Resume map[string][]*discoveryv3.Resource
	// Validate is called per received resource before it is applied (not
	// for a resource byte-identical to the one held); an error NACKs the
	// response (error_detail lists "<name>: <error>" joined by "; ") and
	// the previous state of that resource is kept. Valid resources of a
	// NACKed response are still applied, as ztunnel does. The Client has
	// already checked that the resource has a body of the response's type.
	Validate func(typeURL string, r *discoveryv3.Resource) error
	// OnUpdate is called after a response is applied, when it changed
	// something or is the type's first response on the connection.
	OnUpdate func(u Update)
	// OnState is called on each state change (connecting, connected,
	// synced, disconnected with an error, stopped).
	OnState func(s ClientStatus)
	// Backoff between connection attempts; zero fields take DefaultBackoff's.
	Backoff Backoff
	// Keepalive pings detect a path that blackholes traffic without closing
	// it; zero fields take DefaultClientKeepalive's. grpc-go raises a Time
	// below 10 s to 10 s.
	Keepalive keepalive.ClientParameters
	// MaxRecvMsgSize is the largest response accepted; default
	// ClientMaxRecvMsgSize (with Conn: the connection's own limit).
	MaxRecvMsgSize int
	Logger         *zap.Logger
	// Clock and Rand are seams for tests: the backoff waits on Clock.After
	// and draws its jitter from Rand(n), uniform in [0, n). Defaults: the
	// real clock and math/rand/v2.Int64N.
	Clock Clock
	Rand  func(n int64) int64
}

// DialTarget returns a ClientOptions.Dial that creates a gRPC client for
// target with extra (transport credentials, a context dialer) followed by
// the options the Client passes.
func DialTarget(target string, extra ...grpc.DialOption) func(context.Context, ...grpc.DialOption) (*grpc.ClientConn, error) {
	return func(_ context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
		return grpc.NewClient(target, append(slices.Clip(extra), opts...)...)
	}
}

// Clock is the time a Client sees.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Backoff is exponential with full jitter: before the n-th retry (n from
// 0) the Client waits a uniformly random time in [0, min(Max, Initial*2^n)].
// n goes back to 0 after a connection on which every type synced, so a link
// that flaps after working retries quickly, and one that never works backs
// off to Max.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// ceiling is the upper bound of the wait before retry n.
func (b Backoff) ceiling(n int) time.Duration {
	d := b.Initial
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// delay draws the wait before retry n with rnd (uniform in [0, n)).
func (b Backoff) delay(n int, rnd func(int64) int64) time.Duration {
	return time.Duration(rnd(int64(b.ceiling(n)) + 1))
}

// Update is what one applied response changed, for one type.
type Update struct {
	TypeURL string
	// Upserts are the resources that are new or whose body changed, as
	// held by the Client: read-only.
	Upserts []*discoveryv3.Resource
	// Removed are the names the Client held and the response removed.
	Removed []string
	// Synced: this is the type's first response on this connection; once
	// applied, the Client holds what the server holds (minus what it
	// rejected).
	Synced bool
}

// ClientState is where a Client's connection stands.
type ClientState string

// The states of a Client, in the order a connection goes through them.
const (
	StateIdle         ClientState = "idle"         // Run has not started
	StateConnecting   ClientState = "connecting"   // dialing and opening the stream
	StateConnected    ClientState = "connected"    // subscribed; not every type answered yet
	StateSynced       ClientState = "synced"       // every type answered on this stream
	StateDisconnected ClientState = "disconnected" // the last attempt failed (LastError); waiting to retry
	StateStopped      ClientState = "stopped"      // Run returned
)

// ClientStatus is a snapshot of a Client's connection and counters.
type ClientStatus struct {
	State ClientState
	// Since is when State was entered.
	Since time.Time
	// Connected: a stream is open and subscribed.
	Connected bool
	// Synced: every type has been answered at least once on the current
	// stream.
	Synced bool
	// LastMessage is when the last response arrived (on any stream).
	LastMessage time.Time
	// LastError is why the last attempt failed, kept after a later success
	// (State says whether it is current); LastErrorAt is when.
	LastError   error
	LastErrorAt time.Time
	// DisconnectedAt is when the last stream that had been open ended.
	DisconnectedAt time.Time
	// NextRetry is when the next attempt starts, while disconnected.
	NextRetry time.Time
	// Failures counts failed attempts (dial errors and ended streams);
	// Connects counts streams opened.
	Failures int
	Connects int
	// Responses counts responses received, NACKs those rejected (in whole
	// or in part); LastNACK is the error_detail message of the last NACK.
	Responses int
	NACKs     int
	LastNACK  string
}

// Client is a delta-xDS client that subscribes to whole types (wildcard)
// and keeps what it receives across reconnects; the caller decides when
// that state is stale.
//
// Concurrency: Run (or RunOnce) is the only goroutine that talks to the
// server, applies responses and calls the callbacks; it starts none of its
// own that outlives it. One of them runs at a time. Status and
// Resources may be called from any goroutine, including from the
// callbacks. The callbacks are called with no lock held, one at a time,
// and delay reading the next response while they run.
type Client struct {
	o       ClientOptions
	log     *zap.Logger
	running atomic.Bool
	// recvSize is the receive limit set on each stream; 0 leaves Conn's.
	recvSize int

	// mu guards held (written only by Run's goroutine, which may read it
	// without the lock) and status.
	mu     sync.Mutex
	held   map[string]map[string]*discoveryv3.Resource // type URL -> name -> resource
	status ClientStatus
}

// NewClient returns a Client; Run connects it.
func NewClient(o ClientOptions) *Client {
	if o.Backoff.Initial <= 0 {
		o.Backoff.Initial = DefaultBackoff.Initial
	}
	if o.Backoff.Max <= 0 {
		o.Backoff.Max = DefaultBackoff.Max
	}
	o.Backoff.Max = max(o.Backoff.Max, o.Backoff.Initial)
	if o.Keepalive.Time <= 0 {
		o.Keepalive.Time = DefaultClientKeepalive.Time
	}
	if o.Keepalive.Timeout <= 0 {
		o.Keepalive.Timeout = DefaultClientKeepalive.Timeout
	}
	recvSize := o.MaxRecvMsgSize
	if recvSize <= 0 && o.Conn == nil {
		recvSize = ClientMaxRecvMsgSize
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Rand == nil {
		o.Rand = rand.Int64N
	}
	c := &Client{
		o:        o,
		log:      o.Logger.Named("xds-client"),
		recvSize: max(recvSize, 0),
		held:     make(map[string]map[string]*discoveryv3.Resource, len(o.TypeURLs)),
	}
	for _, t := range o.TypeURLs {
		h := map[string]*discoveryv3.Resource{}
		for _, r := range o.Resume[t] {
			h[r.GetName()] = r
		}
		c.held[t] = h
	}
	c.status = ClientStatus{State: StateIdle, Since: o.Clock.Now()}
	return c
}

func (o ClientOptions) check() error {
	if o.Dial == nil && o.Conn == nil {
		return errors.New("xds client: no Dial func and no Conn")
	}
	if len(o.TypeURLs) == 0 {
		return errors.New("xds client: no type URLs to subscribe to")
	}
	seen := map[string]bool{}
	for _, t := range o.TypeURLs {
		if t == "" || seen[t] {
			return fmt.Errorf("xds client: type URLs %q: empty or repeated %q", o.TypeURLs, t)
		}
		seen[t] = true
	}
	return nil
}

// Status returns a snapshot of the connection state and counters.
func (c *Client) Status() ClientStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Resources returns a copy of the resources held for typeURL, by name (nil
// for a type that is not subscribed). The resources are shared: read-only.
func (c *Client) Resources(typeURL string) map[string]*discoveryv3.Resource {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.held[typeURL]
	if !ok {
		return nil
	}
	return maps.Clone(h)
}

// Run connects, subscribes and applies responses, and reconnects with
// backoff whenever the connection fails, until ctx ends; then it returns
// nil. It returns an error only for invalid options or when Run is already
// running. Held state survives reconnects and a later Run.
func (c *Client) Run(ctx context.Context) error {
	if err := c.o.check(); err != nil {
		return err
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xds client: Run is already running")
	}
	defer c.running.Store(false)
	retry := 0
	for {
		synced, err := c.session(ctx, false)
		if ctx.Err() != nil {
			c.setState(StateStopped, nil)
			return nil
		}
		if synced {
			retry = 0
		}
		delay := c.o.Backoff.delay(retry, c.o.Rand)
		c.failed(err, delay, retry)
		retry++
		select {
		case <-ctx.Done():
			c.setState(StateStopped, nil)
			return nil
		case <-c.o.Clock.After(delay):
		}
	}
}

// onceGrace bounds how long RunOnce waits, after its last reply and
// half-close, for the server to end the stream. Waiting lets the reply reach
// the server (cancelling at once could reset the stream first); the bound
// keeps a server that never ends streams from hanging the caller.
const onceGrace = 2 * time.Second

// NACKError ends a RunOnce: the server sent a response that the Client
// rejected (in whole or in part), so what it holds is not complete.
type NACKError struct {
	TypeURL string
	Nonce   string
	// Detail is the NACK's error_detail message.
	Detail string
}

func (e *NACKError) Error() string {
	return fmt.Sprintf("%s response nonce %q rejected: %s", e.TypeURL, e.Nonce, e.Detail)
}

// RunOnce is the one-shot mode (the CLI's): one stream, no retry. It
// returns nil once every type has been answered and the last response
// ACKed; otherwise the error that ended the attempt, or a *NACKError for the
// first response it rejected. Before returning it half-closes the stream
// and waits, at most onceGrace, for the server to end it, so the last reply
// is delivered. It runs on the caller's goroutine; the callbacks are called
// as in Run.
func (c *Client) RunOnce(ctx context.Context) error {
	if err := c.o.check(); err != nil {
		return err
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xds client: Run is already running")
	}
	defer c.running.Store(false)
	_, err := c.session(ctx, true)
	now := c.o.Clock.Now()
	c.setState(StateStopped, func(s *ClientStatus) {
		if err != nil {
			s.Failures++
			s.LastError = err
			s.LastErrorAt = now
		}
	})
	return err
}

// session dials, runs one stream until it fails or ctx ends, and reports
// whether every type synced on it. With once, it ends the stream as soon as
// every type synced (returning a nil error) or a response was rejected.
func (c *Client) session(ctx context.Context, once bool) (synced bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.setState(StateConnecting, nil)
	conn := c.o.Conn
	if conn == nil {
		cc, err := c.o.Dial(ctx, grpc.WithKeepaliveParams(c.o.Keepalive))
		if err != nil {
			return false, fmt.Errorf("xds client: dial: %w", err)
		}
		defer cc.Close()
		conn = cc
	}
	var callOpts []grpc.CallOption
	if c.recvSize > 0 {
		callOpts = append(callOpts, grpc.MaxCallRecvMsgSize(c.recvSize))
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, callOpts...)
	if err != nil {
		return false, fmt.Errorf("xds client: opening the delta ADS stream: %w", err)
	}
	for _, req := range c.initialRequests() {
		if err := stream.Send(req); err != nil {
			return false, fmt.Errorf("xds client: subscribing to %s: %w", req.GetTypeUrl(), streamErr(stream, err))
		}
	}
	c.setState(StateConnected, func(s *ClientStatus) { s.Connects++ })
	defer func() {
		c.mu.Lock()
		c.status.DisconnectedAt = c.o.Clock.Now()
		c.mu.Unlock()
	}()

	answered := make(map[string]bool, len(c.o.TypeURLs))
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the server ended the stream")
			}
			return synced, fmt.Errorf("xds client: stream: %w", err)
		}
		typeURL := resp.GetTypeUrl()
		first := !answered[typeURL]
		u, reply := c.apply(resp, first)
		sendErr := stream.Send(reply)
		_, subscribed := c.held[typeURL]
		if subscribed {
			answered[typeURL] = true
		}
		if c.o.OnUpdate != nil && subscribed && (first || len(u.Upserts) > 0 || len(u.Removed) > 0) {
			c.o.OnUpdate(u)
		}
		if !synced && len(answered) == len(c.o.TypeURLs) {
			synced = true
			c.setState(StateSynced, nil)
			c.log.Info("synced", zap.Int("types", len(answered)))
		}
		if sendErr != nil {
			return synced, fmt.Errorf("xds client: replying to %s nonce %q: %w", typeURL, resp.GetNonce(), streamErr(stream, sendErr))
		}
		if once && reply.GetErrorDetail() != nil {
			finish(stream, cancel)
			return synced, &NACKError{TypeURL: typeURL, Nonce: resp.GetNonce(), Detail: reply.GetErrorDetail().GetMessage()}
		}
		if once && synced {
			finish(stream, cancel)
			return true, nil
		}
	}
}

// finish half-closes the stream and reads until the server ends it or
// onceGrace passes (then cancel resets it); responses read meanwhile are
// dropped, as the client leaves.
func finish(stream deltaClientStream, cancel context.CancelFunc) {
	defer cancel()
	if stream.CloseSend() != nil {
		return
	}
	timer := time.AfterFunc(onceGrace, cancel)
	defer timer.Stop()
	for {
		if _, err := stream.Recv(); err != nil {
			return
		}
	}
}

// initialRequests subscribes to every type as a wildcard, listing what is
// held with its version so the server may skip what has not changed.
func (c *Client) initialRequests() []*discoveryv3.DeltaDiscoveryRequest {
	reqs := make([]*discoveryv3.DeltaDiscoveryRequest, 0, len(c.o.TypeURLs))
	for _, t := range c.o.TypeURLs {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, Node: c.o.Node}
		if h := c.held[t]; len(h) > 0 {
			req.InitialResourceVersions = make(map[string]string, len(h))
			for name, r := range h {
				req.InitialResourceVersions[name] = r.GetVersion()
			}
		}
		reqs = append(reqs, req)
	}
	return reqs
}

// apply validates resp and applies what is valid (updates first, then
// removals, as ztunnel does), and returns what changed and the ACK or NACK
// to send. Validate runs before the lock is taken.
func (c *Client) apply(resp *discoveryv3.DeltaDiscoveryResponse, first bool) (Update, *discoveryv3.DeltaDiscoveryRequest) {
	typeURL := resp.GetTypeUrl()
	reply := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce()}
	held, subscribed := c.held[typeURL]
	var (
		errs     []string
		upserts  []*discoveryv3.Resource
		unchange []*discoveryv3.Resource // same body, possibly a new version to remember
	)
	if !subscribed {
		errs = append(errs, fmt.Sprintf("type %q was not subscribed", typeURL))
	}
	for _, r := range resp.GetResources() {
		if !subscribed {
			break
		}
		if old := held[r.GetName()]; old != nil && sameBody(old, r) {
			unchange = append(unchange, r)
			continue
		}
		if err := c.check(typeURL, r); err != nil {
			errs = append(errs, r.GetName()+": "+err.Error())
			continue
		}
		upserts = append(upserts, r)
	}

	u := Update{TypeURL: typeURL, Synced: first}
	now := c.o.Clock.Now()
	c.mu.Lock()
	if subscribed {
		for _, r := range unchange {
			held[r.GetName()] = r
		}
		for _, r := range upserts {
			held[r.GetName()] = r
		}
		removed := map[string]bool{}
		for _, name := range resp.GetRemovedResources() {
			if _, ok := held[name]; ok {
				delete(held, name)
				removed[name] = true
				u.Removed = append(u.Removed, name)
			}
		}
		for _, r := range upserts {
			// A name both updated and removed in one response ends removed.
			if !removed[r.GetName()] {
				u.Upserts = append(u.Upserts, r)
			}
		}
	}
	c.status.LastMessage = now
	c.status.Responses++
	if len(errs) > 0 {
		msg := strings.Join(errs, "; ")
		reply.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
		c.status.NACKs++
		c.status.LastNACK = msg
	}
	c.mu.Unlock()
	if reply.ErrorDetail != nil {
		c.log.Warn("rejecting a response (NACK)", zap.String("type", typeURL), zap.String("nonce", resp.GetNonce()),
			zap.Int("rejected", len(errs)), zap.String("error_detail", truncate(reply.ErrorDetail.GetMessage(), 4096)))
	}
	return u, reply
}

// check is what every resource must pass: a body of the response's type,
// then the caller's Validate.
func (c *Client) check(typeURL string, r *discoveryv3.Resource) error {
	body := r.GetResource()
	if body == nil {
		return errors.New("no resource body")
	}
	if body.GetTypeUrl() != typeURL {
		return fmt.Errorf("body type %q in a %q response", body.GetTypeUrl(), typeURL)
	}
	if c.o.Validate != nil {
		return c.o.Validate(typeURL, r)
	}
	return nil
}

// sameBody reports whether two versions of a resource carry the same bytes;
// a server may resend a resource unchanged (istiod does), which changes
// nothing for the caller.
func sameBody(a, b *discoveryv3.Resource) bool {
	return a.GetResource().GetTypeUrl() == b.GetResource().GetTypeUrl() &&
		bytes.Equal(a.GetResource().GetValue(), b.GetResource().GetValue())
}

// setState enters state, applies edit to the status, and calls OnState.
func (c *Client) setState(state ClientState, edit func(s *ClientStatus)) {
	c.mu.Lock()
	if c.status.State != state {
		c.status.State = state
		c.status.Since = c.o.Clock.Now()
	}
	c.status.Connected = state == StateConnected || state == StateSynced
	c.status.Synced = state == StateSynced
	if state != StateDisconnected {
		c.status.NextRetry = time.Time{}
	}
	if edit != nil {
		edit(&c.status)
	}
	s := c.status
	c.mu.Unlock()
	if c.o.OnState != nil {
		c.o.OnState(s)
	}
}

// failed records a failed attempt and the wait before the next one. A
// failure that repeats the previous one's error is logged at debug level:
// a peer that stays unreachable would otherwise log every retry (Failures
// counts them all).
func (c *Client) failed(err error, delay time.Duration, retry int) {
	now := c.o.Clock.Now()
	repeated := false
	c.setState(StateDisconnected, func(s *ClientStatus) {
		repeated = retry > 0 && s.LastError != nil && s.LastError.Error() == err.Error()
		s.Failures++
		s.LastError = err
		s.LastErrorAt = now
		s.NextRetry = now.Add(delay)
	})
	log := c.log.Warn
	if repeated {
		log = c.log.Debug
	}
	log("xDS connection failed; retrying", zap.Error(err), zap.Duration("backoff", delay), zap.Int("retry", retry))
}

type deltaClientStream = grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

// streamErr turns the io.EOF of a failed Send into the stream's real
// status, which only Recv reports.
func streamErr(stream deltaClientStream, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	for {
		if _, rerr := stream.Recv(); rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return errors.New("the server ended the stream")
			}
			return rerr
		}
	}
}
