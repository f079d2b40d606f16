package peers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// State is a link's state.
type State string

// Link states. A link starts connecting (stale when it starts with restored
// services), is synced once the peer's full set arrived, goes stale when the
// peer is lost while it holds services, and withdrawn StaleTTL after the
// loss. Rejected replaces connecting/stale/withdrawn while the peer's last
// answer was a rejection (the reason is kept); services follow the same TTL.
const (
	StateConnecting State = "connecting"
	StateSynced     State = "synced"
	StateStale      State = "stale"
	StateWithdrawn  State = "withdrawn"
	StateRejected   State = "rejected"
	// StateInvalid is shown only in Status, for an istio-remote Gateway
	// that cannot be read as a link (and has no running link).
	StateInvalid State = "invalid"
)

// linkStates are the states a running link can be in, for the state gauge.
var linkStates = []State{StateConnecting, StateSynced, StateStale, StateWithdrawn, StateRejected}

// resource is one FederatedService the link holds, with the version the
// peer gave it.
type resource struct {
	version string
	// body is the encoding as received: saved and resumed from as is.
	body    []byte
	service *federationpb.FederatedService
	// received is when this version arrived (zero when restored).
	received time.Time
}

// link is one istio-remote Gateway's link to a peer.
type link struct {
	cluster string // the link's identity; never changes (a new cluster is a new link)
	source  string // index source: "peer/<cluster>"
	log     *zap.Logger

	// mu guards every field below. It is taken after Manager.mu, never
	// before it.
	mu  sync.Mutex
	cfg federation.Link
	// gen numbers the subscribers of this link; a callback of an older one
	// is ignored, so a restarted or stopped subscriber changes nothing.
	gen    uint64
	cancel context.CancelFunc // of the current subscriber; nil when none runs
	// removed: Unlink ran; nothing may touch the index for this link again.
	removed bool

	state  State
	since  time.Time
	reason string // why rejected
	// lostAt is when the peer was lost; zero while synced or never synced
	// with nothing held. Services are withdrawn at lostAt+StaleTTL.
	lostAt time.Time
	// expired: the services were withdrawn for this loss (cleared on sync).
	expired     bool
	lastMessage time.Time
	lastError   string
	failures    int
	// subFailures is the current subscriber's Failures as last reported.
	subFailures int
	// everSynced: synced at least once since this process linked it.
	everSynced bool
	resources  map[string]resource
	rejections map[string]int // by reason
	// badResources holds, per NACKed name, the error last logged, so that
	// a peer resending the same bad resource is logged once.
	badResources map[string]string
	// restartAt: the subscriber's Run returned early; start a new one then.
	restartAt time.Time

	// dirty: the state changed since the last save; savedAt is when it was
	// last saved (writes are rate-limited per link).
	dirty   bool
	savedAt time.Time
	journal linkJournal
	// admitted are names of the response being validated that passed and
	// are not held yet: they count towards MaxServicesPerLink until applied.
	admitted map[string]bool
}

func newLink(cfg federation.Link, log *zap.Logger) *link {
	return &link{
		cluster:      cfg.Cluster,
		source:       "peer/" + cfg.Cluster,
		log:          log.With(zap.String("cluster", cfg.Cluster), zap.String("gateway", cfg.Gateway)),
		cfg:          cfg,
		resources:    map[string]resource{},
		rejections:   map[string]int{},
		badResources: map[string]string{},
	}
}

// setStateLocked enters state s; since moves, and the state is saved, only
// when the state changes. Must be called under l.mu.
func (l *link) setStateLocked(s State, now time.Time) {
	if l.state != s {
		l.state, l.since = s, now
		l.dirty = true
	}
	if s != StateRejected {
		l.reason = ""
	}
}

// disconnectedStateLocked is the state of a link that is not connected and
// not rejected. Must be called under l.mu.
func (l *link) disconnectedStateLocked() State {
	switch {
	case l.expired:
		return StateWithdrawn
	case !l.lostAt.IsZero():
		return StateStale
	}
	return StateConnecting
}

// loseLocked records that a synced link lost its peer at now. Must be
// called under l.mu.
func (l *link) loseLocked(now time.Time) {
	if l.state == StateSynced {
		l.lostAt = now
		l.setStateLocked(StateStale, now)
	}
}

// resumeLocked are the held resources, for a new subscriber to resume
// from. Must be called under l.mu.
func (l *link) resumeLocked() []*discoveryv3.Resource {
	out := make([]*discoveryv3.Resource, 0, len(l.resources))
	for _, name := range slices.Sorted(maps.Keys(l.resources)) {
		r := l.resources[name]
		out = append(out, &discoveryv3.Resource{
			Name:     name,
			Version:  r.version,
			Resource: &anypb.Any{TypeUrl: federation.TypeURL, Value: r.body},
		})
	}
	return out
}

func importedKey(cluster string, s *federationpb.FederatedService) discovery.Key {
	return discovery.Key{Kind: discovery.KindImportedService, Cluster: cluster, Namespace: s.GetNamespace(), Name: s.GetName()}
}

// putLocked holds r under name and writes it to the index. Must be called
// under l.mu.
func (l *link) putLocked(index *discovery.Index, name string, r resource) {
	imported := federation.NewImported(l.cluster, r.service)
	// The model loop measures convergence from this arrival time, read
	// from the very object it applies (zero for restored state).
	imported.Received = r.received
	if err := index.Upsert(l.source, imported); err != nil {
		// Cannot happen for a resource that passed federation.Validate;
		// logged rather than dropped silently should that ever change.
		l.log.Error("imported service not accepted by the index", zap.String("resource", name), zap.Error(err))
		return
	}
	l.resources[name] = r
	l.dirty = true
	l.journal.touch(name)
}

// dropLocked withdraws name from the index. Must be called under l.mu.
func (l *link) dropLocked(index *discovery.Index, name string) {
	r, ok := l.resources[name]
	if !ok {
		return
	}
	index.DeleteKey(l.source, importedKey(l.cluster, r.service))
	delete(l.resources, name)
	l.dirty = true
	l.journal.touch(name)
}

// withdrawAllLocked withdraws every held service and returns how many.
// Must be called under l.mu.
func (l *link) withdrawAllLocked(index *discovery.Index) int {
	n := len(l.resources)
	for _, name := range slices.Sorted(maps.Keys(l.resources)) {
		l.dropLocked(index, name)
	}
	return n
}

// saveLocked encodes the link's state for the store. lostAt overrides a
// zero l.lostAt (the final save at shutdown). Must be called under l.mu.
func (l *link) saveLocked(now, lostAt time.Time) ([]byte, error) {
	s := savedLink{
		Format:     savedFormat,
		Cluster:    l.cluster,
		Gateway:    l.cfg.Gateway,
		State:      l.state,
		Generation: l.journal.generation,
		LostAt:     l.lostAt,
		SavedAt:    now,
	}
	if s.LostAt.IsZero() {
		s.LostAt = lostAt
	}
	for _, name := range slices.Sorted(maps.Keys(l.resources)) {
		r := l.resources[name]
		s.Items = append(s.Items, savedResource{Name: name, Version: r.version, Proto: r.body})
	}
	return s.encode()
}

// decodeResource reads a received resource: the right type, a
// FederatedService that passes federation.Validate under its name.
func decodeResource(typeURL string, r *discoveryv3.Resource) (*federationpb.FederatedService, error) {
	if typeURL != federation.TypeURL {
		return nil, fmt.Errorf("type %q: this link subscribes to %s only", typeURL, federation.TypeURL)
	}
	body := r.GetResource()
	if body == nil {
		return nil, fmt.Errorf("%s: no resource body", r.GetName())
	}
	if body.GetTypeUrl() != federation.TypeURL {
		return nil, fmt.Errorf("%s: resource of type %q", r.GetName(), body.GetTypeUrl())
	}
	msg := &federationpb.FederatedService{}
	if err := proto.Unmarshal(body.GetValue(), msg); err != nil {
		return nil, fmt.Errorf("%s: %w", r.GetName(), err)
	}
	if err := federation.Validate(r.GetName(), msg); err != nil {
		// The format the xds server reads NACK details in: "<name>: <error>".
		return nil, fmt.Errorf("%s: %w", r.GetName(), err)
	}
	return msg, nil
}
