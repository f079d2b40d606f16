package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Type URLs ztunnel subscribes to.
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// MaxRecvMsgSize is ztunnel's receive limit (200 MiB); grpc-go's default of
// 4 MiB is too small for a whole mesh's initial response.
const MaxRecvMsgSize = 200 << 20

// Config describes the ztunnel being impersonated. Zero values get
// ztunnel-like defaults.
type Config struct {
	// Target is the server address, as for grpc.NewClient.
	Target string
	// DialOptions replace the default (plaintext) transport credentials; the
	// receive size limit is always raised to MaxRecvMsgSize.
	DialOptions []grpc.DialOption
	// Headers are sent as gRPC metadata on every stream (ztunnel sends
	// "authorization: Bearer <token>" and "clusterid").
	Headers map[string]string
	// Token, when set, is sent as "authorization: Bearer <Token>" on every
	// stream, as ztunnel sends its service-account token (audience
	// istio-ca); it replaces an authorization entry of Headers.
	Token string

	IP        string // default 10.0.0.1
	PodName   string // default ztunnel-test
	Namespace string // default istio-system
	NodeName  string // default node-1
	ClusterID string // default Kubernetes
	Network   string // NETWORK metadata, sent only when set

	// OnDemand makes the Address type on-demand (XDS_ON_DEMAND=true).
	OnDemand bool

	// Reject, when set, is asked about every decoded Address after the
	// ztunnel validation passed; an error NACKs that resource as ztunnel
	// NACKs an invalid one. peerd never sends resources a real ztunnel
	// rejects, so tests use this to stand in for one.
	Reject func(name string, a *workloadpb.Address) error

	// InitialBackoff and MaxBackoff bound the reconnect delay, doubled after
	// each failed attempt (defaults 10ms and 15s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration

	Logger *zap.Logger
}

func (c *Config) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.IP, "10.0.0.1")
	def(&c.PodName, "ztunnel-test")
	def(&c.Namespace, "istio-system")
	def(&c.NodeName, "node-1")
	def(&c.ClusterID, "Kubernetes")
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 10 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 15 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// NodeID is ztunnel's xDS node id.
func (c Config) NodeID() string {
	return fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", c.IP, c.PodName, c.Namespace, c.Namespace)
}

// State is what the client holds and how its connection stands. The maps
// passed to a WaitFor predicate are the live ones: read them, do not keep
// or modify them.
type State struct {
	Workloads      map[string]*workloadpb.Workload // by resource name (uid)
	Services       map[string]*workloadpb.Service  // by resource name (namespace/hostname)
	Authorizations map[string]*securitypb.Authorization

	Connected bool // a stream is open
	// Ready: since the current stream opened, one response per subscribed
	// type has been ACKed (ztunnel's readiness condition).
	Ready     bool
	Streams   int // streams opened so far
	Responses int // responses received
	ACKs      int
	NACKs     int
	LastNACK  string // error_detail message of the last NACK
	// UnknownRemovals counts removed names the client did not hold.
	UnknownRemovals int
	// LastError is the error that ended the last stream ("" while none
	// has ended), such as the server's refusal status.
	LastError string
}

// Client is a ztunnel-like delta ADS client. Its state survives reconnects.
type Client struct {
	cfg Config

	mu      sync.Mutex // guards everything below
	state   State
	changed chan struct{} // closed and replaced on every state change
	acked   map[string]bool
	demands map[string][]chan []string // on-demand key -> waiters
	send    func(*discovery.DeltaDiscoveryRequest) error
	cancel  context.CancelFunc // cancels the current stream
	resetBO bool
	// removed lists the held names removals took, in order, so a test
	// can tell what went between two points, not only what is left.
	removed []string
}

// New returns a client; Run connects it.
func New(cfg Config) *Client {
	cfg.defaults()
	return &Client{
		cfg: cfg,
		state: State{
			Workloads:      map[string]*workloadpb.Workload{},
			Services:       map[string]*workloadpb.Service{},
			Authorizations: map[string]*securitypb.Authorization{},
		},
		changed: make(chan struct{}),
		demands: map[string][]chan []string{},
	}
}

// Run connects and keeps reconnecting with backoff until ctx ends. It
// returns nil when ctx ends, or the error of creating the gRPC client.
func (c *Client) Run(ctx context.Context) error {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	opts = append(opts, c.cfg.DialOptions...)
	opts = append(opts, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)))
	conn, err := grpc.NewClient(c.cfg.Target, opts...)
	if err != nil {
		return fmt.Errorf("ztunnel client: target %q: %w", c.cfg.Target, err)
	}
	defer conn.Close()
	backoff := c.cfg.InitialBackoff
	for {
		err := c.session(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		if c.resetBO {
			backoff = c.cfg.InitialBackoff
			c.resetBO = false
		}
		c.mu.Unlock()
		c.cfg.Logger.Debug("stream ended; reconnecting", zap.Error(err), zap.Duration("backoff", backoff))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// Reconnect drops the current stream (keeping state, as ztunnel does when
// its stream breaks); Run opens a new one after the initial backoff.
func (c *Client) Reconnect() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetBO = true
	if c.cancel != nil {
		c.cancel()
	}
}

func (c *Client) typeURLs() []string { return []string{AddressTypeURL, AuthorizationTypeURL} }

func (c *Client) node() *core.Node {
	md := map[string]*structpb.Value{
		"NAME":         structpb.NewStringValue(c.cfg.PodName),
		"NAMESPACE":    structpb.NewStringValue(c.cfg.Namespace),
		"INSTANCE_IPS": structpb.NewStringValue(c.cfg.IP),
		"NODE_NAME":    structpb.NewStringValue(c.cfg.NodeName),
		"CLUSTER_ID":   structpb.NewStringValue(c.cfg.ClusterID),
	}
	if c.cfg.Network != "" {
		md["NETWORK"] = structpb.NewStringValue(c.cfg.Network)
	}
	return &core.Node{Id: c.cfg.NodeID(), Metadata: &structpb.Struct{Fields: md}}
}

// streamStatus turns a failed Send into the status the stream ended with:
// gRPC reports a stream the server ended as io.EOF from Send, and the
// server's status (a refusal, say) only from Recv.
func streamStatus(stream grpc.ClientStream, sendErr error) error {
	if !errors.Is(sendErr, io.EOF) {
		return sendErr
	}
	// Responses still buffered come before the status; the stream is over,
	// so they are dropped.
	for {
		if err := stream.RecvMsg(new(discovery.DeltaDiscoveryResponse)); err != nil {
			return err
		}
	}
}

// metadata is what every stream sends: Headers and the token.
func (c *Client) metadata() metadata.MD {
	md := metadata.New(c.cfg.Headers)
	if c.cfg.Token != "" {
		md.Set("authorization", "Bearer "+c.cfg.Token)
	}
	return md
}

// session runs one stream until it fails or ctx ends; the error is kept as
// State.LastError.
func (c *Client) session(ctx context.Context, conn *grpc.ClientConn) (err error) {
	defer func() {
		if err != nil && ctx.Err() == nil {
			c.mu.Lock()
			c.state.LastError = err.Error()
			c.notifyLocked()
			c.mu.Unlock()
		}
	}()
	return c.stream(ctx, conn)
}

// stream runs one stream until it fails or ctx ends.
func (c *Client) stream(ctx context.Context, conn *grpc.ClientConn) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if md := c.metadata(); md.Len() > 0 {
		sctx = metadata.NewOutgoingContext(sctx, md)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		return err
	}
	var sendMu sync.Mutex
	send := func(req *discovery.DeltaDiscoveryRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(req)
	}

	c.mu.Lock()
	c.cancel = cancel
	c.acked = map[string]bool{}
	c.state.Connected = true
	c.state.Ready = false
	c.state.Streams++
	c.notifyLocked()
	var initial []*discovery.DeltaDiscoveryRequest
	for i, typeURL := range c.typeURLs() {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL}
		if i == 0 {
			req.Node = c.node() // ztunnel sends the node once per stream
		}
		if typeURL == AddressTypeURL && c.cfg.OnDemand {
			req.ResourceNamesSubscribe = []string{"*"}
			req.ResourceNamesUnsubscribe = []string{"*"}
		}
		if held := c.heldLocked(typeURL); len(held) > 0 {
			// ztunnel does not track versions: every held name, empty.
			req.InitialResourceVersions = make(map[string]string, len(held))
			for _, name := range held {
				req.InitialResourceVersions[name] = ""
			}
		}
		initial = append(initial, req)
	}
	if c.cfg.OnDemand && len(c.demands) > 0 {
		initial = append(initial, &discovery.DeltaDiscoveryRequest{
			TypeUrl:                AddressTypeURL,
			ResourceNamesSubscribe: slices.Sorted(maps.Keys(c.demands)),
		})
	}
	c.send = send
	c.mu.Unlock()

	defer func() {
		c.mu.Lock()
		c.send = nil
		c.cancel = nil
		c.state.Connected = false
		c.state.Ready = false
		c.notifyLocked()
		c.mu.Unlock()
	}()

	for _, req := range initial {
		if err := send(req); err != nil {
			return streamStatus(stream, err)
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		reply := c.apply(resp)
		if err := send(reply); err != nil {
			return streamStatus(stream, err)
		}
		c.mu.Lock()
		if reply.ErrorDetail == nil {
			c.state.ACKs++
			c.acked[resp.GetTypeUrl()] = true
			c.state.Ready = len(c.acked) == len(c.typeURLs())
		} else {
			c.state.NACKs++
			c.state.LastNACK = reply.ErrorDetail.GetMessage()
		}
		c.resetBO = true
		c.notifyLocked()
		c.mu.Unlock()
	}
}

// heldLocked lists the resource names held for a type.
func (c *Client) heldLocked(typeURL string) []string {
	switch typeURL {
	case AddressTypeURL:
		names := slices.Collect(maps.Keys(c.state.Workloads))
		return append(names, slices.Collect(maps.Keys(c.state.Services))...)
	case AuthorizationTypeURL:
		return slices.Collect(maps.Keys(c.state.Authorizations))
	}
	return nil
}

// apply applies one response (valid resources first, then removals) and
// returns the ACK or NACK to send.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	typeURL := resp.GetTypeUrl()
	var errs []string
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Responses++
	for _, r := range resp.GetResources() {
		if err := c.updateLocked(typeURL, r); err != nil {
			errs = append(errs, r.GetName()+": "+err.Error())
		}
	}
	for _, name := range resp.GetRemovedResources() {
		c.removeLocked(typeURL, name)
	}
	if typeURL == AddressTypeURL {
		c.wakeDemandsLocked(resp)
	}
	c.notifyLocked()
	reply := &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce()}
	if len(errs) > 0 {
		reply.ErrorDetail = &statuspb.Status{Code: 0, Message: strings.Join(errs, "; ")}
	}
	return reply
}

func (c *Client) updateLocked(typeURL string, r *discovery.Resource) error {
	body := r.GetResource()
	if body == nil {
		return errors.New("no resource body")
	}
	if body.GetTypeUrl() != typeURL {
		return fmt.Errorf("type URL %q, want %q", body.GetTypeUrl(), typeURL)
	}
	switch typeURL {
	case AddressTypeURL:
		var a workloadpb.Address
		if err := body.UnmarshalTo(&a); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		if err := ValidateAddress(&a); err != nil {
			return err
		}
		if c.cfg.Reject != nil {
			if err := c.cfg.Reject(r.GetName(), &a); err != nil {
				return err
			}
		}
		switch t := a.GetType().(type) {
		case *workloadpb.Address_Workload:
			c.state.Workloads[r.GetName()] = t.Workload
		case *workloadpb.Address_Service:
			c.state.Services[r.GetName()] = t.Service
		}
	case AuthorizationTypeURL:
		var p securitypb.Authorization
		if err := body.UnmarshalTo(&p); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		if err := validateEnums(p.ProtoReflect()); err != nil {
			return err
		}
		c.state.Authorizations[r.GetName()] = &p
	default:
		return fmt.Errorf("unexpected type URL %q", typeURL)
	}
	return nil
}

// removeLocked looks a removal up as a workload uid, then as a service's
// namespace/hostname, as ztunnel does.
func (c *Client) removeLocked(typeURL, name string) {
	switch typeURL {
	case AddressTypeURL:
		if _, ok := c.state.Workloads[name]; ok {
			delete(c.state.Workloads, name)
			c.removed = append(c.removed, name)
			return
		}
		if _, ok := c.state.Services[name]; ok {
			delete(c.state.Services, name)
			c.removed = append(c.removed, name)
			return
		}
	case AuthorizationTypeURL:
		if _, ok := c.state.Authorizations[name]; ok {
			delete(c.state.Authorizations, name)
			c.removed = append(c.removed, name)
			return
		}
	}
	c.state.UnknownRemovals++
}

// wakeDemandsLocked completes the lookups whose key is a resource name or a
// removed name of resp; aliases do not count, exactly as in ztunnel.
func (c *Client) wakeDemandsLocked(resp *discovery.DeltaDiscoveryResponse) {
	if len(c.demands) == 0 {
		return
	}
	var names []string
	for _, r := range resp.GetResources() {
		names = append(names, r.GetName())
	}
	for _, key := range append(slices.Clone(names), resp.GetRemovedResources()...) {
		for _, ch := range c.demands[key] {
			ch <- names
		}
		delete(c.demands, key)
	}
}

// Lookup demands one key on the on-demand Address subscription (a
// "network/ip", a workload uid or a "namespace/hostname") and waits for the
// response that names it, as a resource or as a removal. It returns the
// names of the resources in that response. A lookup still pending when the
// stream breaks is demanded again on the next stream.
func (c *Client) Lookup(ctx context.Context, key string) ([]string, error) {
	if !c.cfg.OnDemand {
		return nil, errors.New("ztunnel client: Lookup needs Config.OnDemand")
	}
	ch := make(chan []string, 1)
	c.mu.Lock()
	first := len(c.demands[key]) == 0
	c.demands[key] = append(c.demands[key], ch)
	send := c.send
	c.mu.Unlock()
	if first && send != nil {
		// A send error means the stream broke: the next stream demands it.
		_ = send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{key}})
	}
	select {
	case names := <-ch:
		return names, nil
	case <-ctx.Done():
		c.mu.Lock()
		c.demands[key] = slices.DeleteFunc(c.demands[key], func(x chan []string) bool { return x == ch })
		if len(c.demands[key]) == 0 {
			delete(c.demands, key)
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("ztunnel client: lookup %q: %w", key, ctx.Err())
	}
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// WaitFor blocks until pred holds for the client's state or ctx ends. pred
// runs with the client's lock held: it must be quick and must not call the
// client.
func (c *Client) WaitFor(ctx context.Context, pred func(*State) bool) error {
	for {
		c.mu.Lock()
		ok := pred(&c.state)
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("ztunnel client: waiting for state: %w", ctx.Err())
		}
	}
}

// Stats returns the connection flags and counters (maps left nil).
func (c *Client) Stats() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	s.Workloads, s.Services, s.Authorizations = nil, nil, nil
	return s
}

// Removed returns, in order, the names of held resources that removals
// took since the client started (a removal of a name not held is only
// counted, in State.UnknownRemovals). Slice it at an earlier length to see
// what went in between.
func (c *Client) Removed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.removed)
}

// Workloads returns a copy of the held workloads, by resource name.
func (c *Client) Workloads() map[string]*workloadpb.Workload {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.state.Workloads)
}

// Services returns a copy of the held services, by resource name.
func (c *Client) Services() map[string]*workloadpb.Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.state.Services)
}

// Authorizations returns a copy of the held policies, by resource name.
func (c *Client) Authorizations() map[string]*securitypb.Authorization {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.state.Authorizations)
}
