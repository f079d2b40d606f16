package peers

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/peerd-mesh/peerd/internal/fsutil"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/peerd-mesh/peerd/internal/federation"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// Store keeps the last known state of each link, by cluster, as opaque
// bytes (the encoding is this package's: see savedLink). DirStore is the
// file-mode store; a Kubernetes-mode store keeps the same bytes in the API.
// The Manager calls a Store from one goroutine at a time.
type Store interface {
	// Load returns every saved link state by cluster.
	Load() (map[string][]byte, error)
	// Save replaces the state of cluster, atomically: a reader sees the old
	// or the new bytes, never a mix.
	Save(cluster string, state []byte) error
	// Delete removes the state of cluster; deleting a missing one is not an
	// error.
	Delete(cluster string) error
}

// DirStore is a Store and a Journal in a directory: one snapshot per link,
// "link-<cluster>.json", written to a temporary file and renamed over the
// old one, and the records appended since, "link-<cluster>.journal".
type DirStore struct{ dir string }

var _ Journal = (*DirStore)(nil)

// NewDirStore returns a store in dir, creating dir (mode 0700: the state
// names every service of the linked clusters) when missing.
func NewDirStore(dir string) (*DirStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &DirStore{dir: dir}, nil
}

const (
	filePrefix = "link-"
	fileSuffix = ".json"
)

// fileName escapes cluster so that any label value makes one plain file
// name in dir.
func (s *DirStore) fileName(cluster string) string {
	return filepath.Join(s.dir, filePrefix+url.PathEscape(cluster)+fileSuffix)
}

// Load implements Store. Files that are not link states are skipped.
func (s *DirStore) Load() (map[string][]byte, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	out := map[string][]byte{}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(name, filePrefix) || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		cluster, err := url.PathUnescape(strings.TrimSuffix(strings.TrimPrefix(name, filePrefix), fileSuffix))
		if err != nil {
			errs = append(errs, fmt.Errorf("state dir: %s: %w", name, err))
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("state dir: %w", err))
			continue
		}
		out[cluster] = b
	}
	return out, errors.Join(errs...)
}

// Save implements Store: replace the snapshot atomically
// (fsutil.WriteFileAtomic), then remove the journal the new snapshot
// replaces. A crash in between leaves records of an older generation, which
// Load skips (see replay).
func (s *DirStore) Save(cluster string, state []byte) error {
	if err := fsutil.WriteFileAtomic(s.fileName(cluster), state, 0o600); err != nil {
		return fmt.Errorf("state dir: saving link %s: %w", cluster, err)
	}
	if err := s.removeJournal(cluster); err != nil {
		return fmt.Errorf("state dir: saving link %s: %w", cluster, err)
	}
	return nil
}

// Delete implements Store. The journal goes first: a crash in between
// leaves a snapshot (as a failed Delete would), never records without one.
func (s *DirStore) Delete(cluster string) error {
	if err := s.removeJournal(cluster); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.Remove(s.fileName(cluster)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}

// savedFormat is the version of savedLink's encoding; a file of another
// version is ignored (with a warning) rather than misread.
const savedFormat = 1

// savedLink is the persisted state of one link: JSON, with each resource's
// proto encoding in base64 (encoding/json's []byte).
type savedLink struct {
	Format  int    `json:"format"`
	Cluster string `json:"cluster"`
	Gateway string `json:"gateway"`
	State   State  `json:"state"`
	// Generation identifies this snapshot for the journal records that
	// extend it (zero: none can; see Journal and replay).
	Generation uint64 `json:"generation,omitempty"`
	// LostAt is when the link was lost (zero: it was not). The final save
	// at shutdown sets it for a link that was still up: the shutdown is
	// the last moment this peerd knew the peer was there.
	LostAt  time.Time       `json:"lostAt,omitzero"`
	SavedAt time.Time       `json:"savedAt"`
	Items   []savedResource `json:"resources"`
}

type savedResource struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Proto   []byte `json:"proto"`
}

// encode writes the state compactly: indentation was a quarter of the
// CPU of a save (docs/benchmarks.md, "Cross-cluster convergence").
func (s *savedLink) encode() ([]byte, error) { return json.Marshal(s) }

// decodeSaved reads a saved state. Resources that no longer pass
// federation.Validate (a hand-edited or damaged file) are dropped and
// reported; the rest are kept.
func decodeSaved(cluster string, b []byte) (*savedLink, map[string]resource, error) {
	var s savedLink
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, nil, fmt.Errorf("saved state of link %s: %w", cluster, err)
	}
	if s.Format != savedFormat {
		return nil, nil, fmt.Errorf("saved state of link %s: format %d, this peerd reads %d", cluster, s.Format, savedFormat)
	}
	if s.Cluster != cluster {
		return nil, nil, fmt.Errorf("saved state of link %s: cluster: says %q", cluster, s.Cluster)
	}
	res := make(map[string]resource, len(s.Items))
	var errs []error
	for i, it := range s.Items {
		r, err := decodeSavedResource(it)
		if err != nil {
			errs = append(errs, fmt.Errorf("saved state of link %s: resources[%d] (%s): %w", cluster, i, it.Name, err))
			continue
		}
		res[it.Name] = r
	}
	return &s, res, errors.Join(errs...)
}

// decodeSavedResource reads one saved resource: a FederatedService that
// passes federation.Validate under its name.
func decodeSavedResource(it savedResource) (resource, error) {
	msg := &federationpb.FederatedService{}
	err := proto.Unmarshal(it.Proto, msg)
	if err == nil {
		err = federation.Validate(it.Name, msg)
	}
	if err != nil {
		return resource{}, err
	}
	return resource{version: it.Version, body: it.Proto, service: msg}, nil
}

// persist writes what is due to the store: deletions first, then each
// dirty link at most once per SaveInterval (all of them when final, with
// the links that are up marked lost now, as snapshots). A save is a
// journal record of what changed when the store is a Journal and the
// changes are few (see nextSaveLocked), else a snapshot. It returns the
// next time a save is due. Only the loop (and Run, after the loop) calls
// it, so writes never run concurrently.
func (m *Manager) persist(now time.Time, final bool) time.Time {
	if m.opts.Store == nil {
		return time.Time{}
	}
	journal, canAppend := m.opts.Store.(Journal)
	type write struct {
		l        *link
		cluster  string
		data     []byte
		isRecord bool
	}
	var (
		next   time.Time
		writes []write
	)
	m.mu.Lock()
	deletes := slices.Sorted(maps.Keys(m.deletes))
	clear(m.deletes)
	for _, name := range slices.Sorted(maps.Keys(m.links)) {
		l := m.links[name]
		l.mu.Lock()
		if !final && !l.dirty {
			l.mu.Unlock()
			continue
		}
		if due := l.savedAt.Add(SaveInterval); !final && !l.savedAt.IsZero() && now.Before(due) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			l.mu.Unlock()
			continue
		}
		data, isRecord, err := l.nextSaveLocked(now, final, canAppend)
		if err != nil {
			l.log.Error("link state not saved", zap.Error(err))
			m.metrics.saveErrors.Inc()
		} else {
			writes = append(writes, write{l, l.cluster, data, isRecord})
		}
		l.dirty, l.savedAt = false, now
		l.mu.Unlock()
	}
	m.mu.Unlock()

	for _, cluster := range deletes {
		if err := m.opts.Store.Delete(cluster); err != nil {
			m.log.Warn("saved link state not deleted", zap.String("cluster", cluster), zap.Error(err))
			m.metrics.saveErrors.Inc()
		}
	}
	for _, w := range writes {
		var err error
		if w.isRecord {
			err = journal.Append(w.cluster, w.data)
		} else {
			err = m.opts.Store.Save(w.cluster, w.data)
		}
		if err != nil {
			w.l.log.Warn("link state not saved; retrying", zap.Duration("in", SaveInterval), zap.Error(err))
			m.metrics.saveErrors.Inc()
			w.l.mu.Lock()
			// The changes of this write are no longer tracked, and what
			// the store holds is uncertain: the retry is a snapshot.
			w.l.dirty, w.l.journal.generation = true, 0
			w.l.mu.Unlock()
			if due := now.Add(SaveInterval); next.IsZero() || due.Before(next) {
				next = due
			}
		}
	}
	return next
}
