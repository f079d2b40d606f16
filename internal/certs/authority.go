package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// DefaultResync is how often an Authority re-reads its directory without
// being told to. fsnotify misses changes in some places (a --ca-dir that is
// itself a symlink flipped to another directory, network file systems); a
// re-read of four small files a minute costs nothing and bounds how long
// such a change goes unseen.
const DefaultResync = time.Minute

// AuthorityOptions tunes NewAuthority. The zero value is valid.
type AuthorityOptions struct {
	// Logger receives reloads and failed reloads; nil logs nothing.
	Logger *zap.Logger
	// Registerer receives the CA metrics; nil registers none.
	Registerer prometheus.Registerer
	// Resync is the period of re-reads without a file event; zero means
	// DefaultResync, negative turns them off.
	Resync time.Duration
	// Now is the clock that validates the CA and dates minted leaves;
	// default time.Now.
	Now func() time.Time
}

// Authority is the CA of a cacerts directory as it is now: it re-reads the
// directory when its files change (Run) and swaps the CA in one step when
// the new set of files is valid. A bad new set is reported (logged,
// counted, returned by Reload, kept in Status) and the last good CA stays.
// Safe for concurrent use.
//
// Rotation: root-cert.pem may hold several roots (the old and the new one
// during a root rotation); all of them are trusted, as one bundle, until
// the file changes again.
type Authority struct {
	dir    string
	log    *zap.Logger
	now    func() time.Time
	resync time.Duration

	cur atomic.Pointer[authorityState]

	// mu serialises reloads and guards status and changed.
	mu      sync.Mutex
	status  AuthorityStatus
	changed chan struct{} // closed when cur is replaced
	// lastLogged is the error of the last failed reload that was logged:
	// the same failure found again by a resync is counted, not logged.
	lastLogged string

	reloads *prometheus.CounterVec
}

// authorityState is one loaded CA and the pool of its roots, built once.
type authorityState struct {
	ca    *CA
	roots *x509.CertPool
}

// AuthorityStatus is a snapshot for /debug and readiness.
type AuthorityStatus struct {
	// Loaded is when the current CA was loaded.
	Loaded time.Time
	// Reloads counts the CA replacements since start (the first load not
	// included).
	Reloads int
	// LastError is the most recent failed reload, nil once a later reload
	// succeeded (the files were fixed or changed back).
	LastError   error
	LastErrorAt time.Time
}

// NewAuthority loads dir (see LoadCA for what is checked); a directory
// that does not load is an error here, so a misconfigured peerd fails at
// start-up. Call Run to follow changes.
func NewAuthority(dir string, opts AuthorityOptions) (*Authority, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Resync == 0 {
		opts.Resync = DefaultResync
	}
	a := &Authority{
		dir:     dir,
		log:     opts.Logger,
		now:     opts.Now,
		resync:  opts.Resync,
		changed: make(chan struct{}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_ca_reloads_total",
			Help: "Re-reads of --ca-dir that found new files, by result: replaced (the new CA is in force) or failed (the last good CA stays).",
		}, []string{"result"}),
	}
	ca, err := a.load()
	if err != nil {
		return nil, err
	}
	a.cur.Store(newAuthorityState(ca))
	a.status.Loaded = a.now()
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(a.reloads, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peerd_ca_intermediate_expiry_timestamp_seconds",
			Help: "When the intermediate CA in force (ca-cert.pem) expires, in seconds since the epoch. Minted leaves never outlive it.",
		}, func() float64 { return float64(a.CA().Certificate().NotAfter.Unix()) }))
	}
	return a, nil
}

func newAuthorityState(ca *CA) *authorityState {
	pool := x509.NewCertPool()
	for _, r := range ca.roots {
		pool.AddCert(r)
	}
	return &authorityState{ca: ca, roots: pool}
}

// CA is the CA in force.
func (a *Authority) CA() *CA { return a.cur.Load().ca }

// Roots is the pool of every root in the current root-cert.pem. The pool
// must not be modified.
func (a *Authority) Roots() *x509.CertPool { return a.cur.Load().roots }

// Dir is the directory the Authority reads.
func (a *Authority) Dir() string { return a.dir }

// Changed returns a channel that is closed when the CA now in force is
// replaced. Call it again after it fires for the next change.
func (a *Authority) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// Status returns a snapshot of the reload history.
func (a *Authority) Status() AuthorityStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// kubeDataLink is the symlink a Kubernetes Secret or ConfigMap volume flips
// to publish a new version of all its files at once.
const kubeDataLink = "..data"

// load reads the directory. In a Kubernetes volume every file is a symlink
// through ..data, which the kubelet flips atomically; reading through the
// resolved ..data target gives the four files of one version even when a
// flip happens between two reads.
func (a *Authority) load() (*CA, error) {
	dir := a.dir
	if target, err := filepath.EvalSymlinks(filepath.Join(a.dir, kubeDataLink)); err == nil {
		dir = target
	}
	return loadCA(dir, a.now)
}

// Reload re-reads the directory now. Identical files change nothing; a
// valid new set replaces the CA in force (closing the Changed channel);
// an invalid one is returned, logged (once per distinct error) and
// counted, and the CA in force stays.
func (a *Authority) Reload() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ca, err := a.load()
	if err != nil {
		a.reloads.WithLabelValues("failed").Inc()
		a.status.LastError, a.status.LastErrorAt = err, a.now()
		if msg := err.Error(); msg != a.lastLogged {
			a.lastLogged = msg
			a.log.Warn("--ca-dir: the files do not form a valid CA; keeping the CA in force",
				zap.String("dir", a.dir), zap.Error(err),
				zap.String("in_force", a.CA().Certificate().Subject.String()))
		}
		return err
	}
	if a.status.LastError != nil {
		a.log.Info("--ca-dir: valid again", zap.String("dir", a.dir))
	}
	a.status.LastError, a.lastLogged = nil, ""
	old := a.CA()
	if sameMaterial(old, ca) {
		return nil
	}
	a.cur.Store(newAuthorityState(ca))
	a.status.Loaded = a.now()
	a.status.Reloads++
	a.reloads.WithLabelValues("replaced").Inc()
	close(a.changed)
	a.changed = make(chan struct{})
	a.log.Info("--ca-dir: new CA in force; new handshakes use it, open connections keep theirs",
		zap.String("dir", a.dir),
		zap.String("intermediate", ca.cert.Subject.String()),
		zap.Time("intermediate_not_after", ca.cert.NotAfter),
		zap.Int("roots", len(ca.roots)),
		zap.Bool("intermediate_changed", !bytes.Equal(old.cert.Raw, ca.cert.Raw)),
		zap.Bool("roots_changed", !bytes.Equal(old.rootPEM, ca.rootPEM)))
	return nil
}

// sameMaterial: a and b trust the same roots and sign with the same
// chain. The key is not compared: LoadCA checks it matches ca-cert.pem.
func sameMaterial(a, b *CA) bool {
	return bytes.Equal(a.rootPEM, b.rootPEM) && slices.EqualFunc(a.chain, b.chain, bytes.Equal)
}

// Run follows the directory until ctx is done (it then returns nil). Any
// event in the directory (a file written or renamed into place, the
// Kubernetes ..data flip) re-reads it once the events already queued have
// been taken, without waiting on a timer; a periodic re-read (Resync)
// catches what fsnotify cannot see. It fails only when the directory
// cannot be watched at all.
func (a *Authority) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("certs: watching %s: %w", a.dir, err)
	}
	defer w.Close()
	if err := w.Add(a.dir); err != nil {
		return fmt.Errorf("certs: watching %s: %w", a.dir, err)
	}
	// Whatever changed between NewAuthority and the watch is picked up now.
	_ = a.Reload()

	var tick <-chan time.Time
	if a.resync > 0 {
		t := time.NewTicker(a.resync)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return errors.New("certs: fsnotify event channel closed")
			}
			if err := drain(w); err != nil {
				return err
			}
			_ = a.Reload()
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("certs: fsnotify error channel closed")
			}
			// An overflow loses events: re-read to be sure.
			a.log.Warn("--ca-dir: watch error; re-reading the directory", zap.String("dir", a.dir), zap.Error(err))
			_ = a.Reload()
		case <-tick:
			_ = a.Reload()
		}
	}
}

// drain takes the events already queued, so a burst of writes (four files
// copied one by one, the kubelet's symlink dance) costs one reload.
func drain(w *fsnotify.Watcher) error {
	for {
		select {
		case _, ok := <-w.Events:
			if !ok {
				return errors.New("certs: fsnotify event channel closed")
			}
		default:
			return nil
		}
	}
}
