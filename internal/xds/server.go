package xds

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Type URLs served to ztunnel.
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// ServerOptions configures a Server. Every field may be left zero: a nil
// Logger logs nothing, a nil Registerer registers no metrics, and zero
// Limits take DefaultLimits.
type ServerOptions struct {
	Logger     *zap.Logger
	Registerer prometheus.Registerer
	Limits     Limits
	// Authorize, when set, is asked once per stream and served type URL,
	// on the stream's first request for that type, with the stream's
	// context (peer.FromContext gives the client's TLS state, and
	// metadata.FromIncomingContext its headers). An error ends the stream
	// with PermissionDenied (stream.authorize says why); a *Denial sets the
	// metric labels and may set another code, any other error counts as
	// "other".
	Authorize func(ctx context.Context, typeURL string) error
}

// Denial is an Authorize error that says who was refused and why, in
// words for the log and the client, and as bounded metric labels.
type Denial struct {
	// Identity labels the metric: a small, known set of values (a
	// verified peer identity, "anonymous", "other"), never a raw client
	// name, or /metrics grows with every client.
	Identity string
	// Reason labels the metric: a fixed word ("peer_identity").
	Reason string
	// Message is the explanation sent to the client and logged.
	Message string
	// Code is the status the stream ends with; zero (OK) means
	// PermissionDenied. Unauthenticated says the client must prove who it
	// is; Unavailable that the check itself could not be made (ztunnel
	// retries both with its backoff).
	Code codes.Code
}

func (d *Denial) Error() string { return d.Message }

// Limits bound what one stream may cost the server. A client past a limit
// gets its stream closed with a status that names the limit; other streams
// are unaffected.
type Limits struct {
	// MaxQueuedRequests is how many requests may wait unhandled. The queue
	// must not block the receiver (see stream), so it is bounded instead;
	// a client that ACKs what it receives never has more than a few queued.
	MaxQueuedRequests int
	// MaxNames is how many names one stream may subscribe per type.
	MaxNames int
	// MaxNameLength is the longest resource name or key accepted, in bytes.
	MaxNameLength int
	// NACKLogInterval: after a NACK is logged, further NACKs of the stream
	// are counted but logged at most once per interval.
	NACKLogInterval time.Duration
	// DenialLogInterval: a refusal is counted every time but logged at most
	// once per interval for each type, identity and reason, so that a
	// client retrying with a bad token in a loop cannot flood the log.
	DenialLogInterval time.Duration
}

// DefaultLimits are generous for ztunnel (one stream per node, names as long
// as a Kubernetes uid path) and for peers.
var DefaultLimits = Limits{
	MaxQueuedRequests: 10_000,
	MaxNames:          100_000,
	MaxNameLength:     1024,
	NACKLogInterval:   10 * time.Second,
	DenialLogInterval: 10 * time.Second,
}

func (l Limits) withDefaults() Limits {
	if l.MaxQueuedRequests <= 0 {
		l.MaxQueuedRequests = DefaultLimits.MaxQueuedRequests
	}
	if l.MaxNames <= 0 {
		l.MaxNames = DefaultLimits.MaxNames
	}
	if l.MaxNameLength <= 0 {
		l.MaxNameLength = DefaultLimits.MaxNameLength
	}
	if l.NACKLogInterval <= 0 {
		l.NACKLogInterval = DefaultLimits.NACKLogInterval
	}
	if l.DenialLogInterval <= 0 {
		l.DenialLogInterval = DefaultLimits.DenialLogInterval
	}
	return l
}

// Server serves the caches it was built with over envoy's aggregated
// discovery service, delta variant only.
type Server struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer

	log     *zap.Logger
	caches  map[string]*Cache
	metrics *metrics
	limits  Limits
	ids     atomic.Uint64
	// authorize is ServerOptions.Authorize.
	authorize func(ctx context.Context, typeURL string) error
	// denialLogs rate-limits the refusal log (Limits.DenialLogInterval).
	denialLogs denialLimiter

	// onSend and onRequest, when set (tests only), see every response just
	// before Send and every request before it is handled. shared is the
	// encoding the response was sent from when it is shared by streams.
	onSend    func(resp *discovery.DeltaDiscoveryResponse, shared []byte)
	onRequest func(*discovery.DeltaDiscoveryRequest)
}

// NewServer returns a server for caches; each cache's type URL must be
// distinct (a later duplicate replaces an earlier one).
func NewServer(opts ServerOptions, caches ...*Cache) *Server {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		log:     log.Named("xds"),
		caches:  make(map[string]*Cache, len(caches)),
		metrics: newMetrics(opts.Registerer, caches),
		limits:  opts.Limits.withDefaults(),

		authorize: opts.Authorize,
	}
	for _, c := range caches {
		s.caches[c.TypeURL()] = c
	}
	return s
}

// Register adds the aggregated discovery service to g, which must have been
// created with ServerCodec.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// StreamAggregatedResources rejects state-of-the-world clients: ztunnel and
// peerd's peers speak delta only.
func (s *Server) StreamAggregatedResources(discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "peerd serves delta xDS only: use DeltaAggregatedResources")
}

// DeltaAggregatedResources serves one delta ADS stream until the client
// closes it, the connection ends, or a send fails.
func (s *Server) DeltaAggregatedResources(gs discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	st := &stream{
		srv:      s,
		id:       s.ids.Add(1),
		gs:       gs,
		wake:     make(chan struct{}, 1),
		reqReady: make(chan struct{}, 1),
		fatal:    make(chan error, 1),
		types:    map[string]*typeState{},
		unknown:  map[string]bool{},
	}
	st.log = s.log.With(zap.Uint64("stream", st.id))
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()
	go st.receive()
	// run may be blocked sending to a client that does not read; when the
	// receiver closes the stream for a broken limit, returning here ends
	// the stream, which fails that send and lets run finish.
	done := make(chan error, 1)
	go func() {
		defer st.close()
		done <- st.run(gs.Context())
	}()
	select {
	case err := <-done:
		return err
	case err := <-st.fatal:
		return err
	}
}

// stream is the state of one delta ADS stream. Everything except the request
// queue is owned by the goroutine running run; receive only appends to the
// queue.
type stream struct {
	srv   *Server
	id    uint64
	gs    discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	log   *zap.Logger
	nonce uint64
	// wake is shared by this stream's watchers in every cache: capacity 1,
	// a pending wake already covers any later change.
	wake    chan struct{}
	types   map[string]*typeState
	unknown map[string]bool // type URLs already answered as unknown

	// replies counts requests that answer a response (carry a nonce); a
	// client sends one per response, so more is a broken or hostile client.
	replies uint64
	// nackLogged is when a NACK of this stream was last logged; suppressed
	// counts the NACKs not logged since.
	nackLogged time.Time
	suppressed int

	// The request queue never blocks receive: a client that is itself
	// blocked sending ACKs while we are blocked sending to it would
	// otherwise deadlock both sides. It is bounded by dropping the stream
	// instead: receive stops reading and run ends the stream.
	mu       sync.Mutex
	queue    []*discovery.DeltaDiscoveryRequest
	recvErr  error
	reqReady chan struct{}
	// fatal receives the error that ends the stream when the receiver, not
	// run, detects a broken limit.
	fatal chan error
}

// Statuses of streams closed for breaking a limit.
var (
	errQueueFull = func(n int) error {
		return status.Errorf(codes.ResourceExhausted, "more than %d requests queued without being handled: the client sends faster than it reads", n)
	}
	errTooManyReplies = status.Error(codes.InvalidArgument, "more ACKs/NACKs than responses sent: every response gets exactly one reply")
)

// typeState is one stream's subscription to one cache.
type typeState struct {
	cache *Cache
	w     *watcher
	// wildcard: the client wants every resource of the type.
	wildcard bool
	// names are explicitly subscribed keys: resource names or alias keys.
	names map[string]struct{}
	// resolved are resource names the client received because it asked
	// for one of their aliases, or because they are members of a resource
	// it asked for; they keep getting updates and removals.
	resolved map[string]struct{}
	// followed are resource names asked for on demand whose members the
	// client also gets (a service's endpoints, as istiod's lookup answers),
	// including members that join later.
	followed map[string]struct{}
	// cursor is the cache revision this stream has caught up with.
	cursor uint64
}

func (st *stream) receive() {
	for {
		req, err := st.gs.Recv()
		st.mu.Lock()
		switch {
		case err != nil:
			st.recvErr = err
		case len(st.queue) >= st.srv.limits.MaxQueuedRequests:
			err = st.limitError("queue", errQueueFull(st.srv.limits.MaxQueuedRequests))
			st.recvErr = err
			st.fatal <- err
		default:
			st.queue = append(st.queue, req)
		}
		st.mu.Unlock()
		select {
		case st.reqReady <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

func (st *stream) close() {
	for _, ts := range st.types {
		ts.cache.removeWatcher(ts.w)
	}
}

func (st *stream) run(ctx context.Context) error {
	for {
		st.mu.Lock()
		reqs, recvErr := st.queue, st.recvErr
		st.queue = nil
		st.mu.Unlock()
		for _, req := range reqs {
			if err := st.handle(req); err != nil {
				return err
			}
		}
		if recvErr != nil {
			if _, ok := recvErr.(limitError); ok {
				return recvErr
			}
			if errors.Is(recvErr, io.EOF) {
				return nil
			}
			if status.Code(recvErr) == codes.Canceled || errors.Is(recvErr, context.Canceled) {
				return nil
			}
			return recvErr
		}
		select {
		case <-ctx.Done():
			return nil
		case <-st.reqReady:
		case <-st.wake:
			for _, ts := range st.types {
				if err := st.respond(ts, request{}); err != nil {
					return err
				}
			}
		}
	}
}

// request is what one client request asks of respond beyond the changes
// the stream has not seen yet.
type request struct {
	// initial: the first request for the type on this stream; it is
	// answered even with nothing in it, and the client holds nothing but
	// versions.
	initial bool
	// fullSync: the stream just became wildcard; send every resource.
	fullSync bool
	// demanded are newly subscribed names and alias keys.
	demanded []string
	// versions are initial_resource_versions: what the client holds.
	versions map[string]string
}

// limitError is a status error for a broken limit; it is logged and counted
// when it is made.
type limitError struct{ error }

func (e limitError) GRPCStatus() *status.Status { return status.Convert(e.error) }

func (st *stream) limitError(limit string, err error) error {
	st.srv.metrics.closed.WithLabelValues(limit).Inc()
	st.log.Warn("closing a stream that broke a limit", zap.String("limit", limit), zap.Error(err))
	return limitError{err}
}

// checkRequest enforces the per-request limits.
func (st *stream) checkRequest(req *discovery.DeltaDiscoveryRequest) error {
	if req.GetResponseNonce() != "" {
		st.replies++
		// A little slack: a client may answer a response in flight while
		// the stream is being set up again, but never many more.
		if st.replies > st.nonce+16 {
			return st.limitError("replies", errTooManyReplies)
		}
	}
	for _, list := range [][]string{req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()} {
		for _, name := range list {
			if len(name) > st.srv.limits.MaxNameLength {
				return st.limitError("name_length", status.Errorf(codes.InvalidArgument,
					"resource name of %d bytes (starting %q): names are at most %d bytes", len(name), truncate(name, 32), st.srv.limits.MaxNameLength))
			}
		}
	}
	for name := range req.GetInitialResourceVersions() {
		if len(name) > st.srv.limits.MaxNameLength {
			return st.limitError("name_length", status.Errorf(codes.InvalidArgument,
				"initial_resource_versions name of %d bytes (starting %q): names are at most %d bytes", len(name), truncate(name, 32), st.srv.limits.MaxNameLength))
		}
	}
	return nil
}

func (st *stream) handle(req *discovery.DeltaDiscoveryRequest) error {
	if h := st.srv.onRequest; h != nil {
		h(req)
	}
	if err := st.checkRequest(req); err != nil {
		return err
	}
	typeURL := req.GetTypeUrl()
	if n := req.GetNode(); n != nil && n.GetId() != "" {
		st.log = st.srv.log.With(zap.Uint64("stream", st.id), zap.String("node", n.GetId()))
	}
	ts := st.types[typeURL]
	initial := false
	if ts == nil {
		c := st.srv.caches[typeURL]
		if c == nil {
			return st.answerUnknown(req)
		}
		if err := st.authorize(typeURL); err != nil {
			return err
		}
		ts = &typeState{cache: c, names: map[string]struct{}{}, resolved: map[string]struct{}{}, followed: map[string]struct{}{}}
		ts.w = c.addWatcher(st.wake)
		st.types[typeURL] = ts
		initial = true
	}
	if req.GetErrorDetail() != nil {
		st.nack(req)
	}

	r := request{initial: initial}
	wasWildcard := ts.wildcard
	if initial && len(req.GetResourceNamesSubscribe()) == 0 {
		ts.wildcard = true // legacy wildcard: empty first subscription
	}
	for _, name := range req.GetResourceNamesSubscribe() {
		if name == "*" {
			ts.wildcard = true
			continue
		}
		ts.names[name] = struct{}{}
		r.demanded = append(r.demanded, name)
	}
	for _, name := range req.GetResourceNamesUnsubscribe() {
		if name == "*" {
			ts.wildcard = false
			continue
		}
		delete(ts.names, name)
		delete(ts.resolved, name)
		delete(ts.followed, name)
		if i := indexOf(r.demanded, name); i >= 0 {
			r.demanded = append(r.demanded[:i], r.demanded[i+1:]...)
		}
	}
	if initial && len(req.GetInitialResourceVersions()) > 0 {
		r.versions = req.GetInitialResourceVersions()
		if !ts.wildcard {
			for name := range r.versions {
				if _, ok := ts.names[name]; !ok {
					ts.names[name] = struct{}{}
					r.demanded = append(r.demanded, name)
				}
			}
		}
	}
	if n := len(ts.names); n > st.srv.limits.MaxNames {
		return st.limitError("names", status.Errorf(codes.ResourceExhausted,
			"%d names subscribed for %s: at most %d per stream", n, typeURL, st.srv.limits.MaxNames))
	}
	r.fullSync = ts.wildcard && !wasWildcard
	if !r.initial && !r.fullSync && len(r.demanded) == 0 {
		return nil // a plain ACK or an unsubscription: nothing to send
	}
	return st.respond(ts, r)
}

// authorize asks ServerOptions.Authorize about typeURL. A refusal ends the
// whole stream (PermissionDenied unless the Denial says otherwise) rather
// than answering the type empty: delta xDS has no per-type error, and an
// empty answer reads as "there are no resources", which would make a peer
// link withdraw everything it imported instead of reporting itself
// rejected. No legitimate client mixes a refused type with allowed ones on
// one stream (ztunnel asks for its two types, a peer link for the
// federation type), so nothing good is lost; a refused client retries with
// its own backoff and is refused again, each time counted, and logged at
// most once per DenialLogInterval.
func (st *stream) authorize(typeURL string) error {
	auth := st.srv.authorize
	if auth == nil {
		return nil
	}
	err := auth(st.gs.Context(), typeURL)
	if err == nil {
		return nil
	}
	if ctx := st.gs.Context(); ctx.Err() != nil {
		// The stream ended while the hook waited (the client left, or the
		// server is draining): not a refusal, and not counted as one.
		return status.FromContextError(ctx.Err()).Err()
	}
	d, ok := err.(*Denial)
	if !ok {
		d = &Denial{Identity: "other", Reason: "other", Message: err.Error()}
	}
	st.srv.metrics.denied.WithLabelValues(shortType(typeURL), d.Identity, d.Reason).Inc()
	if log, notLogged := st.srv.denialLogs.allow(typeURL+"\x00"+d.Identity+"\x00"+d.Reason, time.Now(), st.srv.limits.DenialLogInterval); log {
		st.log.Warn("refused a type to the client; closing the stream",
			zap.String("type", typeURL), zap.String("identity", d.Identity), zap.String("reason", d.Reason),
			zap.String("message", d.Message), zap.Int("refusals_not_logged_since_last", notLogged))
	}
	code := d.Code
	if code == codes.OK {
		code = codes.PermissionDenied
	}
	return status.Errorf(code, "%s: %s", typeURL, d.Message)
}

// denialLimiter remembers, per key, when a refusal was last logged and how
// many were not logged since. Keys are made of Denial labels, which are
// bounded, so the map is too.
type denialLimiter struct {
	mu   sync.Mutex
	keys map[string]*denialLog
}

type denialLog struct {
	logged    time.Time
	notLogged int
}

// allow reports whether a refusal with key may be logged now, and how many
// were suppressed before it.
func (l *denialLimiter) allow(key string, now time.Time, interval time.Duration) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = map[string]*denialLog{}
	}
	e := l.keys[key]
	if e == nil {
		l.keys[key] = &denialLog{logged: now}
		return true, 0
	}
	if now.Sub(e.logged) < interval {
		e.notLogged++
		return false, 0
	}
	n := e.notLogged
	e.logged, e.notLogged = now, 0
	return true, n
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

func (st *stream) answerUnknown(req *discovery.DeltaDiscoveryRequest) error {
	typeURL := req.GetTypeUrl()
	if st.unknown[typeURL] {
		return nil // an ACK of our empty answer, or a later request
	}
	if len(st.unknown) >= maxUnknownTypes {
		return st.limitError("unknown_types", status.Errorf(codes.InvalidArgument,
			"more than %d type URLs this server does not serve", maxUnknownTypes))
	}
	st.unknown[typeURL] = true
	st.srv.metrics.unknown.Inc()
	st.log.Warn("client subscribed to a type URL this server does not serve; answering with an empty response",
		zap.String("type", truncate(typeURL, 256)))
	// Counted as a push under "unknown": the type URL is the client's to
	// choose, and a label per value would grow /metrics without bound.
	return st.send(&discovery.DeltaDiscoveryResponse{TypeUrl: typeURL}, "unknown")
}

// maxUnknownTypes bounds the type URLs a stream may ask for in vain (each
// costs a map entry and a log line).
const maxUnknownTypes = 16

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// nack logs and counts a rejected response. Nothing is resent: the client
// does not hold the rejected resources, and they are sent again when they
// change. Logging is rate-limited per stream: a NACK is logged at most once
// per NACKLogInterval, with the number of NACKs not logged since.
func (st *stream) nack(req *discovery.DeltaDiscoveryRequest) {
	typeURL := req.GetTypeUrl()
	st.srv.metrics.nacks.WithLabelValues(shortType(typeURL)).Inc()
	now := time.Now()
	if !st.nackLogged.IsZero() && now.Sub(st.nackLogged) < st.srv.limits.NACKLogInterval {
		st.suppressed++
		return
	}
	detail := req.GetErrorDetail()
	st.log.Warn("client rejected a response (NACK)",
		zap.String("type", typeURL),
		zap.String("nonce", req.GetResponseNonce()),
		zap.Int32("code", detail.GetCode()),
		zap.Strings("resources", NACKResources(truncate(detail.GetMessage(), 4096))),
		zap.String("message", truncate(detail.GetMessage(), 4096)),
		zap.Int("nacks_not_logged_since_last", st.suppressed))
	st.nackLogged, st.suppressed = now, 0
}

// NACKResources extracts the resource names from a NACK message made of
// "<name>: <error>" parts joined by "; " (ztunnel's format). Parts that do
// not have that shape are skipped.
func NACKResources(msg string) []string {
	var names []string
	for _, part := range strings.Split(msg, "; ") {
		name, _, ok := strings.Cut(part, ": ")
		if ok && name != "" && !strings.ContainsAny(name, " \t") {
			names = append(names, name)
		}
	}
	return names
}

// errBehind ends a wildcard stream whose cursor fell below the cache's
// floor: the removals it missed are forgotten, and only the client knows
// what it holds. It reconnects and lists its names in
// initial_resource_versions, which yields exact removals.
var errBehind = status.Error(codes.Unavailable, "stream fell too far behind the cache; reconnect to resynchronise")

// respond sends, in one response for ts's type, every change since the
// stream's cursor that the subscription covers, plus what r asks for.
func (st *stream) respond(ts *typeState, r request) error {
	// A wildcard stream that asks for nothing in particular gets what every
	// wildcard stream at its cursor gets: send the shared encoding.
	if ts.wildcard && len(r.demanded) == 0 && len(r.versions) == 0 && (r.fullSync || !r.initial) {
		return st.respondShared(ts, r)
	}
	c := ts.cache
	var (
		out      []*discovery.Resource
		removed  []string
		sent     map[string]struct{} // only for non-full responses
		incr     bool                // carries changes made after the cursor
		replaced time.Time
	)
	add := func(e *entry) {
		if sent != nil {
			if _, dup := sent[e.name]; dup {
				return
			}
			sent[e.name] = struct{}{}
		}
		out = append(out, &discovery.Resource{Name: e.name, Version: e.version, Resource: e.body})
	}
	// ensureSent starts deduplicating, remembering what out already holds.
	ensureSent := func() {
		if sent != nil {
			return
		}
		sent = make(map[string]struct{}, len(out))
		for _, r := range out {
			sent[r.Name] = struct{}{}
		}
	}

	c.mu.RLock()
	head := c.revision
	replaced = c.replacedAt
	switch {
	case r.fullSync:
		out = make([]*discovery.Resource, 0, c.live)
		for _, e := range c.entries {
			if e.removed {
				continue
			}
			if v := r.versions[e.name]; v != "" && v == e.version {
				continue
			}
			add(e)
		}
		for name := range r.versions {
			if c.liveLocked(name) == nil {
				removed = append(removed, name)
			}
		}
	case r.initial, ts.cursor == head:
		// Nothing held yet beyond r.versions, or nothing new.
	default:
		// The log yields each name once: no dedupe needed unless demanded
		// names are added below.
		ok := c.changesSinceLocked(ts.cursor, func(e *entry) {
			if e.removed {
				if !ts.wildcard && !ts.interestedByName(e.name) {
					return
				}
				if e.createdAt > ts.cursor {
					return // came and went since the cursor: never sent
				}
				delete(ts.resolved, e.name)
				removed = append(removed, e.name)
				return
			}
			if ts.wildcard || ts.interestedByName(e.name) {
				add(e)
				return
			}
			for _, a := range e.aliases {
				if _, ok := ts.names[a]; ok {
					ts.resolved[e.name] = struct{}{}
					add(e)
					return
				}
			}
			for _, g := range e.memberOf {
				if _, ok := ts.followed[g]; ok {
					ts.resolved[e.name] = struct{}{}
					add(e)
					return
				}
			}
		})
		if !ok {
			if ts.wildcard {
				c.mu.RUnlock()
				st.log.Warn("stream fell behind the cache's change log; closing it so the client resynchronises",
					zap.String("type", c.typeURL))
				return errBehind
			}
			// Explicit names only: resend what exists, remove the rest.
			out, removed = out[:0], removed[:0]
			sent = map[string]struct{}{}
			for name := range ts.names {
				r.demanded = append(r.demanded, name)
			}
			for name := range ts.resolved {
				if e := c.liveLocked(name); e != nil {
					add(e)
				} else {
					delete(ts.resolved, name)
					removed = append(removed, name)
				}
			}
		}
		incr = len(out) > 0 || len(removed) > 0
	}
	// follow makes the stream follow name's members (a service's
	// workloads): they are sent now and whenever they change, as istiod's
	// lookup answers a service with its workloads.
	follow := func(name string) {
		ts.followed[name] = struct{}{}
		for _, member := range c.members[name] {
			ts.resolved[member] = struct{}{}
			if !r.fullSync {
				ensureSent()
				add(c.entries[member])
			}
		}
	}
	for _, key := range r.demanded {
		if e := c.liveLocked(key); e != nil {
			// With fullSync it is already in out, or skipped for a
			// matching version.
			if v := r.versions[key]; !r.fullSync && (v == "" || v != e.version) {
				ensureSent()
				add(e)
			}
			follow(key)
			continue
		}
		// Not a resource name: an alias key (on-demand "network/ip") or
		// an unknown name. Either way the client waits for this exact key,
		// so it is listed as removed after the resources it resolves to.
		for _, name := range c.aliases[key] {
			ts.resolved[name] = struct{}{}
			if !r.fullSync {
				ensureSent()
				add(c.entries[name])
			}
			follow(name)
		}
		removed = append(removed, key)
	}
	ts.cursor = head
	ts.w.cursor.Store(head)
	c.mu.RUnlock()

	if len(out) == 0 && len(removed) == 0 && !r.initial {
		return nil
	}
	resp := &discovery.DeltaDiscoveryResponse{
		TypeUrl:          c.typeURL,
		Resources:        out,
		RemovedResources: dedupeRemoved(removed, out),
	}
	if err := st.send(resp, c.typeURL); err != nil {
		return err
	}
	if incr {
		st.srv.metrics.pushLatency.WithLabelValues(shortType(c.typeURL)).Observe(sinceSeconds(replaced))
	}
	return nil
}

// respondShared is respond for a wildcard stream whose response depends
// only on its cursor.
func (st *stream) respondShared(ts *typeState, r request) error {
	c := ts.cache
	c.mu.RLock()
	head := c.revision
	if !r.fullSync && ts.cursor == head {
		c.mu.RUnlock()
		return nil
	}
	from := ts.cursor
	if r.fullSync {
		from = fullSync
	}
	sr := c.sharedLocked(from)
	replaced := c.replacedAt
	if !sr.behind {
		ts.cursor = head
		ts.w.cursor.Store(head)
	}
	c.mu.RUnlock()
	switch {
	case sr.behind:
		st.log.Warn("stream fell behind the cache's change log; closing it so the client resynchronises",
			zap.String("type", c.typeURL))
		return errBehind
	case sr.err != nil:
		return status.Errorf(codes.Internal, "encoding the %s response: %v", c.typeURL, sr.err)
	case sr.resources == 0 && sr.removed == 0 && !r.initial:
		return nil
	}
	if err := st.sendShared(sr.bytes, c.typeURL); err != nil {
		return err
	}
	if !r.fullSync {
		st.srv.metrics.pushLatency.WithLabelValues(shortType(c.typeURL)).Observe(sinceSeconds(replaced))
	}
	return nil
}

func (ts *typeState) interestedByName(name string) bool {
	if _, ok := ts.names[name]; ok {
		return true
	}
	_, ok := ts.resolved[name]
	return ok
}

// dedupeRemoved drops repeated removals and removals of names that are
// being sent in the same response.
func dedupeRemoved(removed []string, out []*discovery.Resource) []string {
	if len(removed) == 0 {
		return nil
	}
	skip := make(map[string]struct{}, len(removed))
	if len(out) <= 64 {
		for _, r := range out {
			skip[r.Name] = struct{}{}
		}
	} else {
		want := make(map[string]struct{}, len(removed))
		for _, n := range removed {
			want[n] = struct{}{}
		}
		for _, r := range out {
			if _, ok := want[r.Name]; ok {
				skip[r.Name] = struct{}{}
			}
		}
	}
	kept := removed[:0]
	for _, n := range removed {
		if _, ok := skip[n]; ok {
			continue
		}
		skip[n] = struct{}{}
		kept = append(kept, n)
	}
	return kept
}

func (st *stream) send(resp *discovery.DeltaDiscoveryResponse, typeURL string) error {
	st.nonce++
	resp.Nonce = formatNonce(st.nonce)
	if h := st.srv.onSend; h != nil {
		h(resp, nil)
	}
	if err := st.gs.Send(resp); err != nil {
		return err
	}
	st.srv.metrics.pushes.WithLabelValues(shortType(typeURL)).Inc()
	return nil
}

// sendShared sends a response encoded once for many streams, adding only
// this stream's nonce.
func (st *stream) sendShared(shared []byte, typeURL string) error {
	st.nonce++
	msg := newPreEncoded(shared, formatNonce(st.nonce))
	if h := st.srv.onSend; h != nil {
		resp := &discovery.DeltaDiscoveryResponse{}
		if err := proto.Unmarshal(append(slices.Clip(shared), msg.nonce...), resp); err != nil {
			return status.Errorf(codes.Internal, "decoding a shared response: %v", err)
		}
		h(resp, shared)
	}
	if err := st.gs.SendMsg(msg); err != nil {
		return err
	}
	st.srv.metrics.pushes.WithLabelValues(shortType(typeURL)).Inc()
	return nil
}

func formatNonce(n uint64) string { return strconv.FormatUint(n, 10) }

func sinceSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return time.Since(t).Seconds()
}
