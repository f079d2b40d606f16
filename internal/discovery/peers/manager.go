package peers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
	"k8s.io/utils/clock"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// DefaultStaleTTL is how long a lost link's services are kept. Five
// minutes rides out what commonly breaks a link for a while without the
// cluster being gone: an east-west gateway or peerd rollout (tens of seconds
// per pod), a node drain, a short partition or a control-plane upgrade on
// the far side. Longer would keep a cluster that is really gone attracting
// traffic for longer: ztunnel keeps sending to the split-horizon workload
// with the capacity last reported (it cannot see the far side's health
// through the gateway), so every connection to it fails until withdrawal.
// Failover inside a global service already prefers local endpoints, so the
// cost of keeping is bounded to clients whose ranking picks the lost cluster.
const DefaultStaleTTL = 5 * time.Minute

// DefaultSyncTimeout bounds how long readiness waits for links to sync:
// long enough for a reachable peer (a TLS handshake and one response, with a
// retry or two), short enough that an unreachable peer does not keep a
// restarted peerd from serving its own cluster.
const DefaultSyncTimeout = 30 * time.Second

// SaveInterval is the shortest time between two writes of one link's state:
// changes in between are coalesced into the next write.
const SaveInterval = time.Second

// restartDelay is how long the manager waits before replacing a subscriber
// whose Run returned while the link was still wanted.
const restartDelay = 5 * time.Second

// errorSource is the index source the manager reports its problems under
// (invalid Gateways, rejected links). It never holds objects; imported
// services are put under "peer/<cluster>".
const errorSource = "peers"

// Options configures a Manager. Index, LocalCluster and NewSubscriber are
// required.
type Options struct {
	// LocalCluster is this peerd's --cluster-name: a Gateway that describes
	// it is ignored.
	LocalCluster string
	Index        *discovery.Index
	// NewSubscriber makes a link's subscriber. It is called on a goroutine
	// of the link's own, never under a lock.
	NewSubscriber func(SubscriberConfig) Subscriber
	// Credentials gives a link's transport credentials (nil: the subscriber
	// gets none). Called like NewSubscriber, once per subscriber.
	Credentials func(federation.Link) credentials.TransportCredentials
	// Store keeps each link's last known state across restarts; nil keeps
	// nothing.
	Store Store
	// StaleTTL (DefaultStaleTTL when zero) and SyncTimeout
	// (DefaultSyncTimeout when zero).
	StaleTTL    time.Duration
	SyncTimeout time.Duration
	// SkipValidateTrustDomain accepts imported identities (SANs) of any
	// trust domain; by default each must be in the link's trust domain, so
	// a peer cannot make ztunnel accept another cluster's identities.
	SkipValidateTrustDomain bool
	// MaxServicesPerLink bounds what one peer can make this peerd hold
	// (DefaultMaxServicesPerLink when zero); more are NACKed.
	MaxServicesPerLink int
	// Clock drives every timestamp, TTL, timeout and save; the real clock
	// when nil.
	Clock clock.Clock
	// Logger (nothing when nil) and Registerer (no metrics when nil).
	Logger     *zap.Logger
	Registerer prometheus.Registerer
}

// Manager runs one link per istio-remote Gateway and feeds what the peers
// export into the Index. See doc.go for its contract.
type Manager struct {
	opts    Options
	log     *zap.Logger
	index   *discovery.Index
	clock   clock.Clock
	metrics *metrics
	// kick wakes the loop (capacity 1, sent without blocking).
	kick chan struct{}
	// startedAt is when the manager was made: the loss time of a restored
	// link that was up when the previous process ended without a final save.
	startedAt     time.Time
	errSourceOnce sync.Once
	// wg counts subscriber goroutines.
	wg sync.WaitGroup
	// ticksBegun and ticksDone count the loop's rounds, so that a test can
	// wait for a round that began after a change it made.
	ticksBegun, ticksDone atomic.Uint64

	// mu guards every field below; a link's mu is taken after it.
	mu sync.Mutex
	// links by Gateway "namespace/name".
	links map[string]*link
	// problems are the current ParseLink and conflict errors by Gateway.
	problems map[string]error
	// ignored are the Gateways that describe the local cluster.
	ignored map[string]bool
	// restored are the saved states not yet claimed by a link, by cluster.
	// Sync deletes those no Gateway claims (see Sync).
	restored map[string]*restoredLink
	// deletes are the clusters whose saved state must be deleted.
	deletes map[string]bool
	// known: Sync ran at least once; knownAt is when.
	known   bool
	knownAt time.Time
	// ready latches once every link synced or SyncTimeout elapsed; readyCh
	// is closed then.
	ready   bool
	readyCh chan struct{}
	runCtx  context.Context
	stopped bool
}

// restoredLink is a saved state loaded at start.
type restoredLink struct {
	saved     *savedLink
	resources map[string]resource
}

// NewManager returns a manager; it loads the saved link states (a state
// that cannot be read is logged and ignored) but starts nothing until Run.
func NewManager(opts Options) (*Manager, error) {
	if opts.Index == nil || opts.NewSubscriber == nil || opts.LocalCluster == "" {
		return nil, errors.New("peers: Index, NewSubscriber and LocalCluster are required")
	}
	if opts.MaxServicesPerLink <= 0 {
		opts.MaxServicesPerLink = DefaultMaxServicesPerLink
	}
	if opts.StaleTTL <= 0 {
		opts.StaleTTL = DefaultStaleTTL
	}
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = DefaultSyncTimeout
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	m := &Manager{
		opts:      opts,
		log:       opts.Logger.Named("peers"),
		index:     opts.Index,
		clock:     opts.Clock,
		kick:      make(chan struct{}, 1),
		startedAt: opts.Clock.Now(),
		links:     map[string]*link{},
		problems:  map[string]error{},
		ignored:   map[string]bool{},
		restored:  map[string]*restoredLink{},
		deletes:   map[string]bool{},
		readyCh:   make(chan struct{}),
	}
	m.metrics = newMetrics(m, opts.Registerer)
	if opts.Store != nil {
		m.loadStore()
	}
	return m, nil
}

func (m *Manager) loadStore() {
	saved, err := m.opts.Store.Load()
	if err != nil {
		m.log.Warn("some saved link states could not be read; those links start without their last known services", zap.Error(err))
	}
	for cluster, b := range saved {
		s, res, err := decodeSaved(cluster, b)
		if err != nil {
			m.log.Warn("saved link state partly or wholly unreadable", zap.String("cluster", cluster), zap.Error(err))
		}
		if s != nil {
			m.loadJournal(cluster, s, res)
			m.restored[cluster] = &restoredLink{saved: s, resources: res}
		}
	}
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// setError reports a problem under errorSource. The source is marked
// synced before its first error: it holds no objects, and registering it
// unsynced would keep the index (and /readyz) waiting forever.
func (m *Manager) setError(subject string, err error) {
	m.errSourceOnce.Do(func() { m.index.MarkSynced(errorSource) })
	m.index.SetError(errorSource, subject, err)
}

func gatewaySubject(gw string) string   { return "gateway " + gw }
func linkSubject(cluster string) string { return "link " + cluster }

// Sync makes the links match gateways (every Gateway of the local cluster;
// those that are not istio-remote are skipped): a new link per new
// Gateway, a restart only when a Gateway's dial-relevant fields change, an
// Unlink per Gateway gone. A Gateway that cannot be read keeps its running
// link (if any) as it was, and its error is logged once, counted, shown by
// Status and reported to the index. Safe to call at any time, before or
// after Run.
func (m *Manager) Sync(gateways []*gatewayv1.Gateway) {
	now := m.clock.Now()
	parsed := map[string]federation.Link{}
	problems := map[string]error{}
	ignored := map[string]bool{}
	for _, gw := range gateways {
		if !federation.IsRemote(gw) {
			continue
		}
		name := gw.Namespace + "/" + gw.Name
		l, err := federation.ParseLink(gw)
		switch {
		case err != nil:
			problems[name] = err
		case l.Cluster == m.opts.LocalCluster:
			ignored[name] = true
		default:
			parsed[name] = l
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	// A Gateway that became unreadable keeps its link as it was: nothing
	// already good is lost to a bad edit.
	for name := range problems {
		if l := m.links[name]; l != nil {
			l.mu.Lock()
			parsed[name] = l.cfg
			l.mu.Unlock()
		}
	}
	// One link per cluster: a running link keeps its cluster, then the
	// first Gateway by name takes it.
	names := slices.SortedFunc(maps.Keys(parsed), func(a, b string) int {
		ra, rb := m.runsCluster(a, parsed[a].Cluster), m.runsCluster(b, parsed[b].Cluster)
		if ra != rb {
			if ra {
				return -1
			}
			return 1
		}
		return cmp.Compare(a, b)
	})
	byCluster := map[string]string{}
	for _, name := range names {
		cluster := parsed[name].Cluster
		if other, ok := byCluster[cluster]; ok {
			problems[name] = fmt.Errorf("gateway %s: metadata.labels[%s]: cluster %q is already linked by gateway %s", name, federation.LabelCluster, cluster, other)
			delete(parsed, name)
			continue
		}
		byCluster[cluster] = name
	}

	for name, l := range m.links {
		if cfg, ok := parsed[name]; !ok || cfg.Cluster != l.cluster {
			m.unlinkLocked(name, l, now)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(parsed)) {
		cfg := parsed[name]
		if l := m.links[name]; l != nil {
			m.updateLocked(l, cfg, now)
			continue
		}
		m.links[name] = m.newLinkLocked(cfg, now)
	}
	m.reportProblemsLocked(problems, ignored)

	// Saved states no link claimed are forgotten, except that of a Gateway
	// that cannot be read right now: its cluster is unknown until it is
	// fixed, and a bad edit must not cost the services saved for it.
	for _, cluster := range slices.Sorted(maps.Keys(m.restored)) {
		if gw := m.restored[cluster].saved.Gateway; gw != "" && problems[gw] != nil {
			continue
		}
		m.log.Info("forgetting the saved state of a cluster no Gateway links", zap.String("cluster", cluster))
		delete(m.restored, cluster)
		m.deletes[cluster] = true
	}
	if !m.known {
		m.known, m.knownAt = true, now
	}
	m.evaluateReadyLocked(now)
	m.wake()
}

// runsCluster reports whether the link of Gateway name runs for cluster.
// Must be called under m.mu.
func (m *Manager) runsCluster(name, cluster string) bool {
	l := m.links[name]
	return l != nil && l.cluster == cluster
}

// reportProblemsLocked logs each new or changed problem once, counts it and
// reports it to the index; problems that went away are cleared. Must be
// called under m.mu.
func (m *Manager) reportProblemsLocked(problems map[string]error, ignored map[string]bool) {
	for _, name := range slices.Sorted(maps.Keys(problems)) {
		err := problems[name]
		if old, ok := m.problems[name]; ok && old.Error() == err.Error() {
			continue
		}
		msg := "istio-remote Gateway cannot be read as a link; it is not linked"
		if m.links[name] != nil {
			msg = "istio-remote Gateway cannot be read as a link; its link keeps the last good configuration"
		}
		m.log.Warn(msg, zap.String("gateway", name), zap.Error(err))
		m.metrics.gatewayProblems.Inc()
		m.setError(gatewaySubject(name), err)
	}
	for name := range m.problems {
		if _, ok := problems[name]; !ok {
			m.setError(gatewaySubject(name), nil)
		}
	}
	m.problems = problems
	for name := range ignored {
		if !m.ignored[name] {
			m.log.Info("istio-remote Gateway describes the local cluster; ignored", zap.String("gateway", name), zap.String("cluster", m.opts.LocalCluster))
		}
	}
	m.ignored = ignored
}

// newLinkLocked makes the link of cfg, with the saved state of its cluster
// when there is one. Must be called under m.mu.
func (m *Manager) newLinkLocked(cfg federation.Link, now time.Time) *link {
	l := newLink(cfg, m.log)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state, l.since = StateConnecting, now
	if r := m.restored[cfg.Cluster]; r != nil {
		delete(m.restored, cfg.Cluster)
		m.restoreLocked(l, r, now)
	}
	l.log.Info("linking", zap.String("address", cfg.Dial()), zap.String("network", cfg.Network), zap.String("trust_domain", cfg.TrustDomain),
		zap.String("state", string(l.state)), zap.Int("services", len(l.resources)))
	m.startLocked(l)
	return l
}

// restoreLocked gives l its saved services. They count as lost at the
// saved loss time (or, when the previous process ended without a final
// save, at this one's start), so the TTL runs from the original loss.
// Must be called under m.mu and l.mu.
func (m *Manager) restoreLocked(l *link, r *restoredLink, now time.Time) {
	lostAt := r.saved.LostAt
	if lostAt.IsZero() {
		lostAt = m.startedAt
	}
	if r.saved.State == StateWithdrawn || len(r.resources) == 0 {
		return
	}
	l.lostAt = lostAt
	if !now.Before(lostAt.Add(m.opts.StaleTTL)) {
		l.expired = true
		l.setStateLocked(StateWithdrawn, now)
		l.log.Info("saved services not restored: the link was lost longer ago than the stale TTL",
			zap.Time("lost_at", lostAt), zap.Duration("stale_ttl", m.opts.StaleTTL), zap.Int("services", len(r.resources)))
		return
	}
	for _, name := range slices.Sorted(maps.Keys(r.resources)) {
		l.putLocked(m.index, name, r.resources[name])
	}
	l.state, l.since = StateStale, lostAt
	l.log.Info("restored the link's last known services; they are kept until the stale TTL from the loss unless the peer syncs first",
		zap.Time("lost_at", lostAt), zap.Time("withdraw_at", lostAt.Add(m.opts.StaleTTL)), zap.Int("services", len(l.resources)))
}

// dialChanged reports whether b must be dialled differently from a.
func dialChanged(a, b federation.Link) bool {
	return a.Dial() != b.Dial() || a.TrustDomain != b.TrustDomain
}

// updateLocked applies a changed Gateway to its link. Must be called under
// m.mu.
func (m *Manager) updateLocked(l *link, cfg federation.Link, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cfg
	l.cfg = cfg
	if !dialChanged(old, cfg) {
		return
	}
	l.log.Info("link Gateway changed how the peer is reached; reconnecting",
		zap.String("address", cfg.Dial()), zap.String("old_address", old.Dial()),
		zap.String("trust_domain", cfg.TrustDomain), zap.String("old_trust_domain", old.TrustDomain))
	l.loseLocked(now)
	m.startLocked(l)
}

// unlinkLocked stops a link whose Gateway is gone and withdraws its
// services at once (Stop, by contrast, keeps them). Must be called under
// m.mu.
func (m *Manager) unlinkLocked(name string, l *link, now time.Time) {
	delete(m.links, name)
	l.mu.Lock()
	l.removed = true
	if l.cancel != nil {
		l.cancel()
		l.cancel = nil
	}
	withdrawn := l.withdrawAllLocked(m.index)
	l.setStateLocked(StateWithdrawn, now)
	l.mu.Unlock()
	m.setError(linkSubject(l.cluster), nil)
	m.deletes[l.cluster] = true
	l.log.Info("unlinked: the Gateway is gone; its services are withdrawn", zap.Int("services", withdrawn))
}

// startLocked starts a new subscriber for l (replacing the running one),
// unless the manager is not running. Must be called under m.mu and l.mu.
func (m *Manager) startLocked(l *link) {
	if m.runCtx == nil || m.stopped || l.removed {
		return
	}
	if l.cancel != nil {
		l.cancel()
	}
	l.gen++
	l.subFailures = 0
	l.restartAt = time.Time{}
	gen := l.gen
	ctx, cancel := context.WithCancel(m.runCtx)
	l.cancel = cancel
	cfg := SubscriberConfig{
		Link:     l.cfg,
		TypeURL:  federation.TypeURL,
		Resume:   l.resumeLocked(),
		Validate: func(typeURL string, r *discoveryv3.Resource) error { return m.validate(l, gen, typeURL, r) },
		OnUpdate: func(u Update) { m.onUpdate(l, gen, u) },
		OnState:  func(s ConnState) { m.onState(l, gen, s) },
	}
	m.wg.Add(1)
	go m.runSubscriber(ctx, l, gen, cfg)
}

func (m *Manager) runSubscriber(ctx context.Context, l *link, gen uint64, cfg SubscriberConfig) {
	defer m.wg.Done()
	if m.opts.Credentials != nil {
		cfg.Credentials = m.opts.Credentials(cfg.Link)
	}
	err := m.opts.NewSubscriber(cfg).Run(ctx)
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		err = errors.New("subscriber ended")
	}
	now := m.clock.Now()
	l.mu.Lock()
	if l.gen == gen && !l.removed {
		l.failures++
		if l.lastError != err.Error() { // a subscriber that cannot start would log every restart
			l.log.Warn("link subscriber ended; starting a new one", zap.Duration("in", restartDelay), zap.Error(err))
		}
		l.lastError = err.Error()
		l.loseLocked(now)
		l.restartAt = now.Add(restartDelay)
	}
	l.mu.Unlock()
	m.wake()
}

// validate is the subscriber's Validate: a resource that fails is counted,
// logged once per (name, error) and NACKed.
func (m *Manager) validate(l *link, gen uint64, typeURL string, r *discoveryv3.Resource) error {
	fs, err := decodeResource(typeURL, r)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		err = m.checkImportLocked(l, r.GetName(), fs)
	}
	if err == nil {
		return nil
	}
	if l.gen != gen || l.removed {
		return err
	}
	l.rejections[ReasonInvalidResource]++
	l.lastError = "rejected resource " + err.Error()
	if _, seen := l.badResources[r.GetName()]; !seen && len(l.badResources) >= maxBadResources {
		// A peer inventing names must not grow this record (or the log)
		// without bound: counted above, remembered no more.
		return err
	}
	if l.badResources[r.GetName()] != err.Error() {
		l.badResources[r.GetName()] = err.Error()
		held, ok := l.resources[r.GetName()]
		l.log.Warn("peer sent an invalid resource; NACKed, the previous version (if any) is kept",
			zap.String("resource", r.GetName()), zap.String("version", r.GetVersion()),
			zap.Bool("previous_kept", ok), zap.String("previous_version", held.version), zap.Error(err))
	}
	return err
}

// DefaultMaxServicesPerLink: far above any real cluster's global services,
// low enough that a peer cannot exhaust this peerd's memory (about 5 KB per
// import) or its VIP range.
const DefaultMaxServicesPerLink = 50_000

// maxBadResources bounds the per-link record of rejected resource names.
const maxBadResources = 1024

// checkImportLocked applies what the link knows beyond federation.Validate:
// every SAN is in the link's trust domain (unless skipped), and the link
// holds at most MaxServicesPerLink services. Must be called under l.mu.
func (m *Manager) checkImportLocked(l *link, name string, fs *federationpb.FederatedService) error {
	if _, held := l.resources[name]; !held && !l.admitted[name] {
		if len(l.resources)+len(l.admitted) >= m.opts.MaxServicesPerLink {
			return fmt.Errorf("%s: the link already holds %d services, the most one peer may export", name, len(l.resources)+len(l.admitted))
		}
	}
	if err := m.checkIdentitiesLocked(l, name, fs); err != nil {
		return err
	}
	// Validate sees a response's resources before any is applied: the
	// admitted ones count towards the cap until onUpdate holds them.
	if l.admitted == nil {
		l.admitted = map[string]bool{}
	}
	l.admitted[name] = true
	return nil
}

// checkIdentitiesLocked: every SAN is in the link's trust domain unless
// the check is skipped.
func (m *Manager) checkIdentitiesLocked(l *link, name string, fs *federationpb.FederatedService) error {
	if m.opts.SkipValidateTrustDomain {
		return nil
	}
	td := l.cfg.PeerTrustDomain()
	for i, san := range fs.GetSubjectAltNames() {
		id, err := certs.ParseSPIFFE(san)
		if err != nil {
			return fmt.Errorf("%s: subject_alt_names[%d]: %w", name, i, err)
		}
		if id.TrustDomain != td {
			return fmt.Errorf("%s: subject_alt_names[%d]: %s is in trust domain %s, the link's is %s", name, i, san, id.TrustDomain, td)
		}
	}
	return nil
}

// onUpdate writes a response's accepted resources into the index.
func (m *Manager) onUpdate(l *link, gen uint64, u Update) {
	now := m.clock.Now()
	l.mu.Lock()
	if l.gen != gen || l.removed {
		l.mu.Unlock()
		return
	}
	l.lastMessage = now
	clear(l.admitted)
	for _, r := range u.Upserts {
		msg, err := decodeResource(cmp.Or(u.TypeURL, federation.TypeURL), r)
		if err != nil {
			continue // Validate NACKed it, counted and logged it already
		}
		delete(l.badResources, r.GetName())
		l.putLocked(m.index, r.GetName(), resource{version: r.GetVersion(), body: r.GetResource().GetValue(), service: msg, received: now})
	}
	for _, name := range u.Removed {
		delete(l.badResources, name)
		l.dropLocked(m.index, name)
	}
	synced := u.Synced && l.state != StateSynced
	if u.Synced {
		if l.state != StateSynced {
			l.log.Info("link synced", zap.Int("services", len(l.resources)))
		}
		l.lostAt, l.expired, l.everSynced = time.Time{}, false, true
		l.setStateLocked(StateSynced, now)
		m.setError(linkSubject(l.cluster), nil)
	}
	dirty := l.dirty
	l.mu.Unlock()
	if synced || dirty {
		m.wake()
	}
}

// onState follows the subscriber's connection: a lost peer makes a synced
// link stale, a rejection is counted and kept with its reason.
func (m *Manager) onState(l *link, gen uint64, s ConnState) {
	now := m.clock.Now()
	l.mu.Lock()
	defer m.wake()
	defer l.mu.Unlock()
	if l.gen != gen || l.removed {
		return
	}
	newFailure := s.Failures > l.subFailures
	if newFailure {
		l.failures += s.Failures - l.subFailures
		l.subFailures = s.Failures
	}
	if s.Err != nil {
		l.lastError = s.Err.Error()
	}
	if s.Connected {
		// Connected means only that the requests went out: a peer that
		// refuses us does so after that. A rejection ends with the peer's
		// first answer (onUpdate), or with a failure of another kind below,
		// so a refusing peer does not flap between rejected and connecting
		// (and log) on every retry.
		return
	}
	if l.state == StateSynced {
		l.log.Warn("link lost its peer; its services are kept until the stale TTL unless it syncs again",
			zap.Duration("stale_ttl", m.opts.StaleTTL), zap.Int("services", len(l.resources)), zap.Error(s.Err))
	}
	l.loseLocked(now)
	reason, rejected := classify(s.Err)
	if !rejected {
		if l.state == StateRejected {
			m.setError(linkSubject(l.cluster), nil)
			l.setStateLocked(l.disconnectedStateLocked(), now)
		}
		return
	}
	if newFailure {
		l.rejections[reason]++
	}
	if l.state != StateRejected || l.reason != reason {
		l.log.Warn("peer rejected", zap.String("reason", reason), zap.Error(s.Err))
		m.setError(linkSubject(l.cluster), fmt.Errorf("peer link %s (gateway %s): rejected (%s): %w", l.cluster, l.cfg.Gateway, reason, s.Err))
	}
	l.setStateLocked(StateRejected, now)
	l.reason = reason
}

// Run starts the links and runs the manager until ctx is done: TTLs, the
// sync timeout, saves, restarts. Then it stops every subscriber, waits for
// them and saves every link's state (marking links that were up as lost
// now); the index keeps the imported services (Stop is not Unlink). Run may
// be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.runCtx != nil {
		m.mu.Unlock()
		return errors.New("peers: Run called twice")
	}
	// Subscribers run under a context of their own, cancelled only after
	// their callbacks were disowned below: cancelling them with ctx would
	// let a stopping subscriber report its end as the peer's loss.
	subCtx, cancelSubs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSubs()
	m.runCtx = subCtx
	for _, name := range slices.Sorted(maps.Keys(m.links)) {
		l := m.links[name]
		l.mu.Lock()
		m.startLocked(l)
		l.mu.Unlock()
	}
	m.mu.Unlock()

	m.loop(ctx)

	m.mu.Lock()
	m.stopped = true
	for _, l := range m.links {
		l.mu.Lock()
		// What a stopping subscriber reports is not news about the peer:
		// the link keeps the state it had (Stop is not a loss).
		l.gen++
		if l.cancel != nil {
			l.cancel()
			l.cancel = nil
		}
		l.mu.Unlock()
	}
	m.mu.Unlock()
	cancelSubs()
	m.wg.Wait()
	m.persist(m.clock.Now(), true)
	return nil
}

// loop does the timed work whenever it is due or something changed. Timers
// are armed for absolute deadlines and checked again after arming, so a
// clock that moves while the timer is being set is never missed.
func (m *Manager) loop(ctx context.Context) {
	for {
		next := m.tick(m.clock.Now())
		var timerC <-chan time.Time
		var timer clock.Timer
		if !next.IsZero() {
			timer = m.clock.NewTimer(next.Sub(m.clock.Now()))
			timerC = timer.C()
			if !m.clock.Now().Before(next) {
				timer.Stop()
				continue
			}
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-m.kick:
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// tick withdraws what outlived the TTL, restarts ended subscribers, settles
// readiness, saves what is due, and returns the next deadline (zero: none).
func (m *Manager) tick(now time.Time) time.Time {
	m.ticksBegun.Add(1)
	var next time.Time
	later := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	m.mu.Lock()
	for _, name := range slices.Sorted(maps.Keys(m.links)) {
		l := m.links[name]
		l.mu.Lock()
		if !l.lostAt.IsZero() && !l.expired {
			if deadline := l.lostAt.Add(m.opts.StaleTTL); now.Before(deadline) {
				later(deadline)
			} else {
				m.expireLocked(l, now)
			}
		}
		if !l.restartAt.IsZero() {
			if now.Before(l.restartAt) {
				later(l.restartAt)
			} else {
				m.startLocked(l)
			}
		}
		l.mu.Unlock()
	}
	if !m.evaluateReadyLocked(now) && m.known {
		later(m.knownAt.Add(m.opts.SyncTimeout))
	}
	m.mu.Unlock()
	later(m.persist(now, false))
	m.ticksDone.Add(1)
	return next
}

// expireLocked withdraws a lost link's services: StaleTTL has passed since
// the loss. The subscriber is restarted without initial versions, since the
// link no longer holds what it had told the peer it holds. Must be called
// under m.mu and l.mu.
func (m *Manager) expireLocked(l *link, now time.Time) {
	withdrawn := l.withdrawAllLocked(m.index)
	l.expired = true
	if l.state != StateRejected {
		l.setStateLocked(StateWithdrawn, now)
	}
	l.log.Warn("link lost for longer than the stale TTL; its services are withdrawn",
		zap.Time("lost_at", l.lostAt), zap.Duration("stale_ttl", m.opts.StaleTTL), zap.Int("services", withdrawn))
	m.startLocked(l)
}

// evaluateReadyLocked latches readiness once every link synced or
// SyncTimeout passed since the first Sync (warning once, naming the links
// still waiting). Must be called under m.mu.
func (m *Manager) evaluateReadyLocked(now time.Time) bool {
	if m.ready {
		return true
	}
	if !m.known {
		return false
	}
	var waiting []string
	for _, name := range slices.Sorted(maps.Keys(m.links)) {
		l := m.links[name]
		l.mu.Lock()
		if !l.everSynced {
			waiting = append(waiting, fmt.Sprintf("%s (gateway %s, %s)", l.cluster, name, l.state))
		}
		l.mu.Unlock()
	}
	if len(waiting) > 0 {
		if now.Before(m.knownAt.Add(m.opts.SyncTimeout)) {
			return false
		}
		m.log.Warn("peer sync timeout: going ready without these links' current services (restored ones are served until their TTL)",
			zap.Duration("peer_sync_timeout", m.opts.SyncTimeout), zap.Strings("links", waiting))
	}
	m.ready = true
	close(m.readyCh)
	return true
}

// Synced reports whether every link synced at least once, or the sync
// timeout passed, since the first Sync. It latches: links added or lost
// later do not make it false again.
func (m *Manager) Synced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.evaluateReadyLocked(m.clock.Now())
}

// WaitSynced blocks until Synced is true or ctx is done. The sync timeout
// needs Run to be running.
func (m *Manager) WaitSynced(ctx context.Context) error {
	select {
	case <-m.readyCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for peer links to sync: %w", ctx.Err())
	}
}
