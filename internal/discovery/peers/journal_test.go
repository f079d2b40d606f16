package peers

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/protobuf/proto"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
)

func TestUnframe(t *testing.T) {
	one, two := frame([]byte("first")), frame([]byte(`{"second":2}`))
	whole := slices.Concat(one, two)
	damaged := slices.Clone(whole)
	damaged[len(damaged)-1] ^= 1
	for _, tc := range []struct {
		name    string
		journal []byte
		want    []string
		torn    bool
	}{
		{name: "empty", journal: nil, want: nil},
		{name: "two records", journal: whole, want: []string{"first", `{"second":2}`}},
		{name: "torn header", journal: whole[:len(one)+3], want: []string{"first"}, torn: true},
		{name: "torn body", journal: whole[:len(whole)-1], want: []string{"first"}, torn: true},
		{name: "zeros where the body should be", journal: slices.Concat(one, make([]byte, len(two))), want: []string{"first"}, torn: true},
		{name: "damaged body", journal: damaged, want: []string{"first"}, torn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			records, err := unframe(tc.journal)
			var got []string
			for _, r := range records {
				got = append(got, string(r))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("records = %q, want %q", got, tc.want)
			}
			if torn := errors.Is(err, ErrTornRecord); torn != tc.torn {
				t.Errorf("err = %v, want torn: %v", err, tc.torn)
			}
		})
	}
}

func TestDirStoreJournal(t *testing.T) {
	dir := t.TempDir()
	s, err := NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save("odd/name", []byte("snapshot")); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"r1", "r2"} {
		if err := s.Append("odd/name", []byte(r)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Records("odd/name"); err != nil || fmt.Sprintf("%s", got) != "[r1 r2]" {
		t.Errorf("Records() = %s, %v", got, err)
	}
	// Load returns snapshots only; the journal is read with Records.
	if got, err := s.Load(); err != nil || len(got) != 1 || string(got["odd/name"]) != "snapshot" {
		t.Errorf("Load() = %q, %v", got, err)
	}
	assertFiles(t, dir, "link-odd%2Fname.journal", "link-odd%2Fname.json")

	// A snapshot replaces the records.
	if err := s.Save("odd/name", []byte("snapshot 2")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Records("odd/name"); err != nil || len(got) != 0 {
		t.Errorf("Records() after Save = %s, %v", got, err)
	}
	assertFiles(t, dir, "link-odd%2Fname.json")

	if err := s.Append("odd/name", []byte("r3")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("odd/name"); err != nil {
		t.Fatal(err)
	}
	assertFiles(t, dir)
}

func assertFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("files in the state dir = %v, want %v", got, want)
	}
}

// countingDir is a DirStore that counts snapshots, records and the bytes
// of both, and can fail appends.
type countingDir struct {
	*DirStore
	saves, appends, written atomic.Int64
	failAppends             atomic.Bool
}

func (s *countingDir) Save(cluster string, b []byte) error {
	s.saves.Add(1)
	s.written.Add(int64(len(b)))
	return s.DirStore.Save(cluster, b)
}

func (s *countingDir) Append(cluster string, b []byte) error {
	if s.failAppends.Load() {
		return errors.New("disk full")
	}
	s.appends.Add(1)
	s.written.Add(int64(len(b)))
	return s.DirStore.Append(cluster, b)
}

// snapshotsOnly hides the Journal of a store: every save is a snapshot,
// as before journals.
type snapshotsOnly struct{ Store }

// journalEnv is a manager with one link driven directly, without a
// subscriber: what persist sees, minus the network.
type journalEnv struct {
	t     testing.TB
	dir   string
	store *countingDir
	m     *Manager
	l     *link
	now   time.Time
}

const journalCluster = "cluster2"

// newJournalEnv makes a synced link holding n services, saved once (a
// snapshot), in a new state dir. Store wraps the counting DirStore when
// not nil.
func newJournalEnv(t testing.TB, n int, wrap func(*countingDir) Store) *journalEnv {
	t.Helper()
	dir := t.TempDir()
	ds, err := NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := &journalEnv{t: t, dir: dir, store: &countingDir{DirStore: ds}, now: epoch}
	var store Store = e.store
	if wrap != nil {
		store = wrap(e.store)
	}
	e.m = newStoreManager(t, store, prometheus.NewRegistry(), zap.NewNop())
	e.l = newLink(federation.Link{Cluster: journalCluster, Gateway: "istio-gateways/" + journalCluster}, e.m.log)
	e.m.links[e.l.cfg.Gateway] = e.l
	e.l.mu.Lock()
	e.l.setStateLocked(StateSynced, e.now)
	e.l.mu.Unlock()
	for i := range n {
		e.put(i, 1)
	}
	e.save()
	return e
}

func newStoreManager(t testing.TB, store Store, reg prometheus.Registerer, log *zap.Logger) *Manager {
	t.Helper()
	m, err := NewManager(Options{
		LocalCluster:  "cluster1",
		Index:         discovery.NewIndex(),
		NewSubscriber: func(SubscriberConfig) Subscriber { panic("journal tests start no subscriber") },
		Store:         store,
		Clock:         testingclock.NewFakeClock(epoch),
		Logger:        log,
		Registerer:    reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// put holds version capacity of service i, as a remote change would.
func (e *journalEnv) put(i int, capacity uint32) {
	s := svc("apps", serviceName(i), capacity)
	body, err := proto.Marshal(s)
	if err != nil {
		e.t.Fatal(err)
	}
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	e.l.putLocked(e.m.index, "apps/"+serviceName(i), resource{version: fmt.Sprint(capacity), body: body, service: s, received: e.now})
}

func (e *journalEnv) drop(i int) {
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	e.l.dropLocked(e.m.index, "apps/"+serviceName(i))
}

func (e *journalEnv) lose() {
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	e.l.loseLocked(e.now)
}

// save runs persist a SaveInterval after the previous one.
func (e *journalEnv) save() {
	e.now = e.now.Add(SaveInterval)
	e.m.persist(e.now, false)
}

// counts are the snapshots and records written so far.
func (e *journalEnv) counts() (saves, appends int64) {
	return e.store.saves.Load(), e.store.appends.Load()
}

func (e *journalEnv) fileSize(suffix string) int64 {
	fi, err := os.Stat(filepath.Join(e.dir, filePrefix+journalCluster+suffix))
	if errors.Is(err, os.ErrNotExist) {
		return -1
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return fi.Size()
}

// want is the link's state as a snapshot of it now would restore it.
func (e *journalEnv) want() *restoredLink {
	e.l.mu.Lock()
	data, err := e.l.saveLocked(e.now, time.Time{})
	e.l.mu.Unlock()
	if err != nil {
		e.t.Fatal(err)
	}
	s, res, err := decodeSaved(journalCluster, data)
	if err != nil {
		e.t.Fatal(err)
	}
	return &restoredLink{saved: s, resources: res}
}

// restart is what a new process loads from the state dir.
type restart struct {
	link    *restoredLink
	logs    *observer.ObservedLogs
	reg     *prometheus.Registry
	manager *Manager
}

func (e *journalEnv) restart() restart {
	e.t.Helper()
	ds, err := NewDirStore(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	m := newStoreManager(e.t, ds, reg, zap.New(core))
	return restart{link: m.restored[journalCluster], logs: logs, reg: reg, manager: m}
}

// diffRestored describes how got differs from want: link-level fields,
// then each resource's name, version and body.
func diffRestored(want, got *restoredLink) string {
	if got == nil {
		return "nothing restored"
	}
	var diffs []string
	w, g := want.saved, got.saved
	if w.Gateway != g.Gateway || w.State != g.State || !w.LostAt.Equal(g.LostAt) {
		diffs = append(diffs, fmt.Sprintf("link: got gateway %q state %s lostAt %v, want %q %s %v", g.Gateway, g.State, g.LostAt, w.Gateway, w.State, w.LostAt))
	}
	for name, wr := range want.resources {
		gr, ok := got.resources[name]
		switch {
		case !ok:
			diffs = append(diffs, name+": missing")
		case gr.version != wr.version || !bytes.Equal(gr.body, wr.body):
			diffs = append(diffs, fmt.Sprintf("%s: got version %s, want %s (bodies equal: %v)", name, gr.version, wr.version, bytes.Equal(gr.body, wr.body)))
		}
	}
	for name := range got.resources {
		if _, ok := want.resources[name]; !ok {
			diffs = append(diffs, name+": not in the link")
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

func TestRemoteChangeAppendsARecord(t *testing.T) {
	e := newJournalEnv(t, 100, nil)
	if saves, appends := e.counts(); saves != 1 || appends != 0 {
		t.Fatalf("first save: %d snapshots, %d records; want one snapshot", saves, appends)
	}
	snapshot := e.fileSize(fileSuffix)

	e.put(7, 2)
	e.save()
	if saves, appends := e.counts(); saves != 1 || appends != 1 {
		t.Fatalf("after one change: %d snapshots, %d records; want one record appended", saves, appends)
	}
	if got := e.fileSize(fileSuffix); got != snapshot {
		t.Errorf("snapshot is %d bytes after the change, want it untouched (%d)", got, snapshot)
	}
	if journal := e.fileSize(journalSuffix); journal <= 0 || journal > snapshot/20 {
		t.Errorf("journal is %d bytes for one change of a %d-byte snapshot of 100 services, want under a twentieth", journal, snapshot)
	}
	if d := diffRestored(e.want(), e.restart().link); d != "" {
		t.Errorf("restart: %s", d)
	}
}

func TestRestartReplaysSnapshotAndJournal(t *testing.T) {
	e := newJournalEnv(t, 20, nil)
	var lostAt time.Time
	for _, change := range []struct {
		name string
		do   func()
	}{
		{"update", func() { e.put(1, 5) }},
		{"add", func() { e.put(20, 1) }},
		{"remove", func() { e.drop(2) }},
		{"remove and add back", func() { e.drop(3); e.put(3, 7) }},
		{"add and remove", func() { e.put(21, 1); e.drop(21) }},
		{"link lost", func() { lostAt = e.now; e.lose() }},
		{"update while lost", func() { e.put(1, 6) }},
	} {
		change.do()
		e.save()
		if d := diffRestored(e.want(), e.restart().link); d != "" {
			t.Errorf("restart after %q: %s", change.name, d)
		}
	}
	if saves, appends := e.counts(); saves != 1 || appends != 7 {
		t.Errorf("%d snapshots, %d records; want 1 snapshot then one record per change", saves, appends)
	}
	if r := e.restart(); r.link.saved.State != StateStale || (lostAt.IsZero() || !r.link.saved.LostAt.Equal(lostAt)) {
		t.Errorf("restored state %s lost at %v, want stale lost at the loss", r.link.saved.State, r.link.saved.LostAt)
	}
}

func TestTornJournalTail(t *testing.T) {
	e := newJournalEnv(t, 20, nil)
	e.put(1, 2)
	e.save()
	want := e.want()
	e.put(2, 2)
	e.drop(3)
	e.save()
	// A crash during the second append: its last bytes never arrived.
	journal := filepath.Join(e.dir, filePrefix+journalCluster+journalSuffix)
	if err := os.Truncate(journal, e.fileSize(journalSuffix)-3); err != nil {
		t.Fatal(err)
	}
	r := e.restart()
	if d := diffRestored(want, r.link); d != "" {
		t.Errorf("restart: %s; want the state of the first record", d)
	}
	if n := r.logs.FilterMessageSnippet("journal partly unreadable").Len(); n != 1 {
		t.Errorf("%d warnings about the journal, want 1: %v", n, r.logs.All())
	}
	if n := testutil.ToFloat64(r.manager.metrics.journalDamaged); n != 1 {
		t.Errorf("peerd_peer_state_journal_damaged_total = %v, want 1", n)
	}
}

func TestSnapshotCompactsJournal(t *testing.T) {
	t.Run("many changes at once", func(t *testing.T) {
		e := newJournalEnv(t, 20, nil)
		e.put(1, 2)
		e.save()
		for i := range 5 { // a quarter of the link
			e.put(i, 3)
		}
		e.save()
		if saves, appends := e.counts(); saves != 2 || appends != 1 {
			t.Errorf("%d snapshots, %d records; want a record, then a snapshot", saves, appends)
		}
		if n := e.fileSize(journalSuffix); n != -1 {
			t.Errorf("journal of %d bytes left after a snapshot", n)
		}
		if d := diffRestored(e.want(), e.restart().link); d != "" {
			t.Errorf("restart: %s", d)
		}
	})
	t.Run("journal as large as the snapshot", func(t *testing.T) {
		e := newJournalEnv(t, 20, nil)
		snapshot := e.fileSize(fileSuffix)
		for i := 0; ; i++ {
			e.put(i%20, uint32(i+2))
			e.save()
			if saves, _ := e.counts(); saves == 2 {
				break
			}
			if journal := e.fileSize(journalSuffix); journal > snapshot {
				t.Fatalf("journal of %d bytes outgrew its %d-byte snapshot", journal, snapshot)
			}
		}
		if _, appends := e.counts(); appends < 2 {
			t.Errorf("%d records before the snapshot, want several", appends)
		}
		if n := e.fileSize(journalSuffix); n != -1 {
			t.Errorf("journal of %d bytes left after a snapshot", n)
		}
		if d := diffRestored(e.want(), e.restart().link); d != "" {
			t.Errorf("restart: %s", d)
		}
	})
	t.Run("final save", func(t *testing.T) {
		e := newJournalEnv(t, 20, nil)
		e.put(1, 2)
		e.save()
		e.m.persist(e.now, true)
		if saves, appends := e.counts(); saves != 2 || appends != 1 {
			t.Errorf("%d snapshots, %d records; want the final save a snapshot", saves, appends)
		}
		if n := e.fileSize(journalSuffix); n != -1 {
			t.Errorf("journal of %d bytes left after the final save", n)
		}
		if r := e.restart(); !r.link.saved.LostAt.Equal(e.now) {
			t.Errorf("final save lost at %v, want %v", r.link.saved.LostAt, e.now)
		}
	})
}

// A crash after a snapshot was written but before the journal it replaces
// was removed: the old records are in the snapshot already and must not
// be applied over it, nor hide the records appended after it.
func TestCrashBetweenSnapshotAndJournalRemoval(t *testing.T) {
	e := newJournalEnv(t, 20, nil)
	e.put(1, 2)
	e.drop(2)
	e.save()
	journal := filepath.Join(e.dir, filePrefix+journalCluster+journalSuffix)
	old, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	e.put(2, 3) // back: the old record removed it
	for i := 3; i < 10; i++ {
		e.drop(i)
	}
	e.save()
	if saves, _ := e.counts(); saves != 2 {
		t.Fatalf("%d snapshots, want a second one", saves)
	}
	if err := os.WriteFile(journal, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if d := diffRestored(e.want(), e.restart().link); d != "" {
		t.Errorf("restart with the old journal: %s", d)
	}

	// This process goes on appending after the old records.
	e.put(1, 4)
	e.save()
	if saves, appends := e.counts(); saves != 2 || appends != 2 {
		t.Fatalf("%d snapshots, %d records; want a record after the old ones", saves, appends)
	}
	r := e.restart()
	if d := diffRestored(e.want(), r.link); d != "" {
		t.Errorf("restart with old and new records: %s", d)
	}
	if n := r.logs.FilterMessageSnippet("journal").Len(); n != 0 {
		t.Errorf("old records reported as a problem: %v", r.logs.All())
	}
}

func TestFailedAppendIsRetriedAsASnapshot(t *testing.T) {
	e := newJournalEnv(t, 20, nil)
	e.store.failAppends.Store(true)
	e.put(1, 2)
	e.save()
	if n := testutil.ToFloat64(e.m.metrics.saveErrors); n != 1 {
		t.Errorf("peerd_peer_state_save_errors_total = %v, want 1", n)
	}
	e.store.failAppends.Store(false)
	e.save()
	if saves, appends := e.counts(); saves != 2 || appends != 0 {
		t.Errorf("%d snapshots, %d records; want the retry a snapshot", saves, appends)
	}
	if d := diffRestored(e.want(), e.restart().link); d != "" {
		t.Errorf("restart: %s", d)
	}
}

func TestStoreWithoutJournalSavesSnapshots(t *testing.T) {
	e := newJournalEnv(t, 20, func(s *countingDir) Store { return snapshotsOnly{s} })
	e.put(1, 2)
	e.save()
	if saves, appends := e.counts(); saves != 2 || appends != 0 {
		t.Errorf("%d snapshots, %d records; want snapshots only", saves, appends)
	}
	if e.l.journal.changed != nil {
		t.Errorf("changes tracked for a store that keeps no journal: %v", e.l.journal.changed)
	}
}

// BenchmarkPersistOneChange is the cost of saving a link after one remote
// change, by link size, with a journal and with snapshots only (what every
// save was before journals). B-written/op is what the store was given.
func BenchmarkPersistOneChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, mode := range []struct {
			name string
			wrap func(*countingDir) Store
		}{
			{"journal", nil},
			{"snapshot", func(s *countingDir) Store { return snapshotsOnly{s} }},
		} {
			b.Run(fmt.Sprintf("resources=%d/%s", n, mode.name), func(b *testing.B) {
				e := newJournalEnv(b, n, mode.wrap)
				start := e.store.written.Load()
				b.ResetTimer()
				for i := range b.N {
					e.put(i%n, uint32(i+2))
					e.save()
				}
				b.StopTimer()
				b.ReportMetric(float64(e.store.written.Load()-start)/float64(b.N), "B-written/op")
			})
		}
	}
}
