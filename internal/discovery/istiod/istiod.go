// Package istiod is the extension-mode source (docs/extension-mode.md): it
// subscribes to istiod's own ztunnel stream, as a ztunnel does, and hands
// what it receives to the model loop, decoded.
//
// What it owns: the connection to istiod (internal/xds's Client: wildcard
// Address and Authorization, reconnect with backoff, resume with
// initial_resource_versions), decoding and NACKing what does not decode,
// and saying whether the relayed state is current or stale.
//
// What it must never do: change a resource (the mesh's amendments are
// internal/ambient's, applied by the caller), or drop what it holds when the
// stream is lost: ztunnel keeps its state across an istiod restart, and so
// does the relay.
//
// Concurrency: Run owns the connection; the callbacks record changes under
// one mutex. Changed is a capacity-1, latest-wins signal; the one consumer
// calls Take after each, which returns every name whose resource changed
// since its previous call, once, with the current resource (nil: removed).
package istiod

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/xds"
	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Options configure a Source. Address is required.
type Options struct {
	// Address is istiod's gRPC address, HOST:PORT (plaintext: its
	// --grpcAddr, 15010).
	Address string
	// Node describes the ztunnel peerd stands in for: istiod sees a
	// ztunnel with these values in its node id and metadata.
	Node NodeInfo
	// Dial replaces the plaintext dial (tests, TLS).
	Dial func(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error)
	// Backoff between attempts; zero fields take internal/xds's defaults.
	Backoff    xds.Backoff
	Logger     *zap.Logger
	Registerer prometheus.Registerer
}

// NodeInfo is ztunnel's identity towards istiod.
type NodeInfo struct {
	IP, PodName, Namespace, NodeName, ClusterID, Network string
}

// node is ztunnel's xDS node: id "ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local"
// and the metadata ztunnel sends (NETWORK only when set).
func (n NodeInfo) node() *corev3.Node {
	md := map[string]*structpb.Value{
		"NAME":         structpb.NewStringValue(n.PodName),
		"NAMESPACE":    structpb.NewStringValue(n.Namespace),
		"INSTANCE_IPS": structpb.NewStringValue(n.IP),
		"NODE_NAME":    structpb.NewStringValue(n.NodeName),
		"CLUSTER_ID":   structpb.NewStringValue(n.ClusterID),
	}
	if n.Network != "" {
		md["NETWORK"] = structpb.NewStringValue(n.Network)
	}
	return &corev3.Node{
		Id:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", n.IP, n.PodName, n.Namespace, n.Namespace),
		Metadata: &structpb.Struct{Fields: md},
	}
}

// Source relays istiod's ztunnel stream.
type Source struct {
	client *xds.Client
	log    *zap.Logger

	changed chan struct{}
	synced  chan struct{}

	mu sync.Mutex // guards the fields below
	// pending changes by name since the last Take (nil: removed).
	addresses      map[string]*workloadpb.Address
	authorizations map[string]*securitypb.Authorization
	syncedOnce     bool
	// answered: the types answered on the current stream.
	answered map[string]bool
	// wasSynced: the current or last stream synced.
	wasSynced bool

	decodeErrors prometheus.Counter
	// rejected: why each rejected resource was last rejected, by type and
	// name. Only Run's goroutine (validate) uses it.
	rejected map[string]string
}

// New returns a Source; Run connects it.
func New(o Options) (*Source, error) {
	if o.Address == "" && o.Dial == nil {
		return nil, errors.New("--istiod-address: empty")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	s := &Source{
		log:            o.Logger,
		changed:        make(chan struct{}, 1),
		synced:         make(chan struct{}),
		addresses:      map[string]*workloadpb.Address{},
		authorizations: map[string]*securitypb.Authorization{},
		answered:       map[string]bool{},
		rejected:       map[string]string{},
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_istiod_rejected_resources_total",
			Help: "Resources from istiod that did not decode (or were misnamed) and were NACKed; they never reach ztunnel.",
		}),
	}
	dial := o.Dial
	if dial == nil {
		dial = xds.DialTarget(o.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	s.client = xds.NewClient(xds.ClientOptions{
		Dial:     dial,
		TypeURLs: []string{xds.AddressTypeURL, xds.AuthorizationTypeURL},
		Node:     o.Node.node(),
		Validate: s.validate,
		OnUpdate: s.onUpdate,
		OnState:  s.onState,
		Backoff:  o.Backoff,
		Logger:   o.Logger,
	})
	stale := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "peerd_istiod_stale",
		Help: "1 while the relayed state is not current: istiod's stream is not synced (peerd serves the last state it relayed).",
	}, func() float64 {
		if s.Status().Stale {
			return 1
		}
		return 0
	})
	o.Registerer.MustRegister(s.decodeErrors, stale)
	return s, nil
}

// Run connects to istiod and relays until ctx ends.
func (s *Source) Run(ctx context.Context) error { return s.client.Run(ctx) }

// Changed signals that Take has something.
func (s *Source) Changed() <-chan struct{} { return s.changed }

// Synced is closed once both types have been answered on one stream: peerd
// then holds what istiod holds.
func (s *Source) Synced() <-chan struct{} { return s.synced }

// Take returns the changes since the previous Take, by name (nil: removed).
func (s *Source) Take() (map[string]*workloadpb.Address, map[string]*securitypb.Authorization) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, z := s.addresses, s.authorizations
	s.addresses, s.authorizations = map[string]*workloadpb.Address{}, map[string]*securitypb.Authorization{}
	return a, z
}

// Status is the relay's state for /readyz and the link view.
type Status struct {
	xds.ClientStatus
	// Stale: the relayed state may be behind istiod's (never synced, or
	// the stream that synced was lost). StaleSince is when that began.
	Stale      bool
	StaleSince time.Time
}

// Status returns the relay's state.
func (s *Source) Status() Status {
	cs := s.client.Status()
	st := Status{ClientStatus: cs, Stale: !cs.Synced}
	if st.Stale {
		st.StaleSince = cs.DisconnectedAt
		if st.StaleSince.IsZero() {
			st.StaleSince = cs.Since
		}
	}
	return st
}

// decode reads one resource's body as the type its response carries.
func decode(typeURL string, r *discoveryv3.Resource) (proto.Message, error) {
	var m proto.Message
	switch typeURL {
	case xds.AddressTypeURL:
		m = &workloadpb.Address{}
	case xds.AuthorizationTypeURL:
		m = &securitypb.Authorization{}
	default:
		return nil, fmt.Errorf("type %q not relayed", typeURL)
	}
	if err := proto.Unmarshal(r.GetResource().GetValue(), m); err != nil {
		return nil, fmt.Errorf("does not decode as %s: %w", typeURL, err)
	}
	if a, ok := m.(*workloadpb.Address); ok {
		// ztunnel looks removals up by these names; a resource named
		// otherwise could never be removed from it.
		want := ambient.ResourceName(a)
		if a.GetWorkload() == nil && a.GetService() == nil {
			return nil, errors.New("address: neither workload nor service")
		}
		if r.GetName() != want {
			return nil, fmt.Errorf("name: want %q (a workload's uid, a service's namespace/hostname)", want)
		}
	}
	return m, nil
}

// validate NACKs what does not decode; the Client keeps the previous
// version of the resource, if any.
// A resource rejected again for the same reason (istiod re-sends on each
// push) is counted but logged once.
func (s *Source) validate(typeURL string, r *discoveryv3.Resource) error {
	key := typeURL + " " + r.GetName()
	if _, err := decode(typeURL, r); err != nil {
		s.decodeErrors.Inc()
		if s.rejected[key] != err.Error() {
			s.rejected[key] = err.Error()
			s.log.Error("NACKing a resource from istiod: it is not relayed", zap.String("type", typeURL), zap.String("resource", r.GetName()), zap.Error(err))
		}
		return err
	}
	delete(s.rejected, key)
	return nil
}

func (s *Source) onUpdate(u xds.Update) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range u.Upserts {
		m, err := decode(u.TypeURL, r)
		if err != nil {
			continue // validate saw it first; unreachable
		}
		switch m := m.(type) {
		case *workloadpb.Address:
			s.addresses[r.GetName()] = m
		case *securitypb.Authorization:
			s.authorizations[r.GetName()] = m
		}
	}
	for _, name := range u.Removed {
		if u.TypeURL == xds.AddressTypeURL {
			s.addresses[name] = nil
		} else {
			s.authorizations[name] = nil
		}
	}
	if u.Synced {
		s.answered[u.TypeURL] = true
		if len(s.answered) == 2 && !s.syncedOnce {
			s.syncedOnce = true
			close(s.synced)
		}
	}
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// onState forgets, on each new stream, which types were answered, and says
// once per lost stream that the relayed state is now stale (the Client logs
// every failed attempt itself).
func (s *Source) onState(st xds.ClientStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st.State {
	case xds.StateConnecting:
		clear(s.answered)
	case xds.StateSynced:
		s.wasSynced = true
	case xds.StateDisconnected:
		if s.wasSynced {
			s.wasSynced = false
			s.log.Warn("istiod stream lost: serving the last relayed state until it is back", zap.Error(st.LastError))
		}
	}
}
