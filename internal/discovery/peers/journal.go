package peers

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Journal is an optional Store extension: a store that can add a change
// record to a link's saved state instead of replacing all of it, so that
// a save costs what changed since the last one rather than the whole link
// (issue 8, section 9). The state of a link is its last Save followed by
// the records appended since; Save replaces both, Delete removes both.
// DirStore implements it; a store that does not is always saved whole.
type Journal interface {
	Store
	// Append adds record after cluster's earlier records, durably: when it
	// returns nil, the record is part of the saved state.
	Append(cluster string, record []byte) error
	// Records returns cluster's records in the order they were appended
	// (none when there are none). A torn or damaged record (a crash during
	// Append) ends them: the records before it are returned with an error
	// wrapping ErrTornRecord.
	Records(cluster string) ([][]byte, error)
}

// ErrTornRecord is a journal record that was not completely written.
var ErrTornRecord = errors.New("torn or damaged journal record")

// The journal of a link is the file "link-<cluster>.journal" next to its
// snapshot: a sequence of frames, each the record's length (4 bytes, big
// endian), the CRC-32C of the length and the record (4 bytes) and the
// record. The checksum tells a torn tail (a crash during a write) from a
// record: a file system may extend the file before the data reaches it,
// and zeros must not read as an empty record (the CRC of nothing is 0,
// hence the length in it).
const (
	journalSuffix = ".journal"
	frameHeader   = 8
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

func (s *DirStore) journalName(cluster string) string {
	return filepath.Join(s.dir, filePrefix+url.PathEscape(cluster)+journalSuffix)
}

// Append implements Journal: one write of one frame, then fsync (at most
// one per link per SaveInterval). A failed write is cut off again, so that
// a partial frame cannot end the journal before later records.
func (s *DirStore) Append(cluster string, record []byte) error {
	f, err := os.OpenFile(s.journalName(cluster), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("state dir: appending to the journal of link %s: %w", cluster, err)
	}
	fi, err := f.Stat()
	if err == nil {
		_, err = f.Write(frame(record))
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			_ = f.Truncate(fi.Size())
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("state dir: appending to the journal of link %s: %w", cluster, err)
	}
	return nil
}

// Records implements Journal.
func (s *DirStore) Records(cluster string) ([][]byte, error) {
	b, err := os.ReadFile(s.journalName(cluster))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	records, err := unframe(b)
	if err != nil {
		return records, fmt.Errorf("state dir: journal of link %s: %w", cluster, err)
	}
	return records, nil
}

// removeJournal removes cluster's journal; a missing one is not an error.
func (s *DirStore) removeJournal(cluster string) error {
	if err := os.Remove(s.journalName(cluster)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func frame(record []byte) []byte {
	out := make([]byte, frameHeader+len(record))
	binary.BigEndian.PutUint32(out, uint32(len(record)))
	copy(out[frameHeader:], record)
	binary.BigEndian.PutUint32(out[4:], frameChecksum(out[:4], record))
	return out
}

func frameChecksum(length, record []byte) uint32 {
	return crc32.Update(crc32.Checksum(length, crc32c), crc32c, record)
}

// unframe splits a journal into its records; the records are sub-slices
// of b.
func unframe(b []byte) ([][]byte, error) {
	var records [][]byte
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < frameHeader {
			return records, fmt.Errorf("record %d (byte %d): %w: %d bytes of its %d-byte header", len(records)+1, off, ErrTornRecord, len(rest), frameHeader)
		}
		n := binary.BigEndian.Uint32(rest)
		if uint64(n) > uint64(len(rest)-frameHeader) {
			return records, fmt.Errorf("record %d (byte %d): %w: %d bytes of %d", len(records)+1, off, ErrTornRecord, len(rest)-frameHeader, n)
		}
		record := rest[frameHeader : frameHeader+int(n)]
		if frameChecksum(rest[:4], record) != binary.BigEndian.Uint32(rest[4:]) {
			return records, fmt.Errorf("record %d (byte %d): %w: checksum mismatch", len(records)+1, off, ErrTornRecord)
		}
		records = append(records, record)
		off += frameHeader + int(n)
	}
	return records, nil
}

// savedRecord is one journal record: the link-level fields as they were at
// the save, and the resources that changed since the previous save (their
// new versions, or their removal). Records extend the snapshot of their
// generation, in sequence from 1.
type savedRecord struct {
	Format     int             `json:"format"`
	Cluster    string          `json:"cluster"`
	Generation uint64          `json:"generation"`
	Seq        uint64          `json:"seq"`
	Gateway    string          `json:"gateway"`
	State      State           `json:"state"`
	LostAt     time.Time       `json:"lostAt,omitzero"`
	SavedAt    time.Time       `json:"savedAt"`
	Upserted   []savedResource `json:"upserted,omitempty"`
	Removed    []string        `json:"removed,omitempty"`
}

// linkJournal is what a link knows of its journal. link.mu guards it.
type linkJournal struct {
	// changed are the resource names upserted or removed since the last
	// save; nil when the store keeps no journal (nothing is tracked then).
	changed map[string]struct{}
	// generation identifies the last snapshot this process wrote of the
	// link; records extend it. Zero: there is none, or the journal cannot
	// be trusted after a failed write, and the next save is a snapshot.
	generation uint64
	// seq is the last record appended to generation.
	seq uint64
	// snapshotBytes and journalBytes are the sizes written of the snapshot
	// and of the records since: a journal larger than its snapshot costs
	// more to replay than a new snapshot costs to write.
	snapshotBytes, journalBytes int
}

// touch notes that name changed, for the next record.
func (j *linkJournal) touch(name string) {
	if j.changed != nil {
		j.changed[name] = struct{}{}
	}
}

// journalChangeShare is the share of a link's resources that may change
// between two saves for the save to be a record: beyond it a snapshot is
// about as cheap, and the journal would soon outgrow the snapshot anyway.
const journalChangeShare = 4 // changes < resources/4

// nextSaveLocked encodes l's next save: a journal record when the store
// keeps one (canAppend), a snapshot of this process exists, the changes
// since the last save are under a quarter of the link's resources and the
// journal stays no larger than the snapshot; otherwise (and always when
// final, whose lostAt it applies) a snapshot of a new generation. Must be
// called under l.mu.
func (l *link) nextSaveLocked(now time.Time, final, canAppend bool) (data []byte, isRecord bool, err error) {
	j := &l.journal
	if canAppend && !final && j.generation != 0 && len(j.changed)*journalChangeShare < len(l.resources) {
		rec, err := l.recordLocked(now)
		if err == nil && j.journalBytes+frameHeader+len(rec) <= j.snapshotBytes {
			j.seq++
			j.journalBytes += frameHeader + len(rec)
			clear(j.changed)
			return rec, true, nil
		}
	}
	var lostAt time.Time
	if final {
		lostAt = now
	}
	j.generation = 0
	if canAppend {
		j.generation = newGeneration()
		if j.changed == nil {
			// Tracking starts with the first snapshot: before it there
			// is nothing for a record to extend.
			j.changed = map[string]struct{}{}
		}
	}
	data, err = l.saveLocked(now, lostAt)
	j.seq, j.journalBytes, j.snapshotBytes = 0, 0, len(data)
	clear(j.changed)
	if err != nil {
		j.generation = 0
	}
	return data, false, err
}

// newGeneration is a snapshot's identity: random, so that a snapshot never
// takes the records of another (an earlier process's, or one whose journal
// outlived it) for its own.
func newGeneration() uint64 {
	for {
		if g := rand.Uint64(); g != 0 {
			return g
		}
	}
}

// recordLocked encodes the record of the changes since the last save as
// the next record of the current generation. Must be called under l.mu.
func (l *link) recordLocked(now time.Time) ([]byte, error) {
	r := savedRecord{
		Format:     savedFormat,
		Cluster:    l.cluster,
		Generation: l.journal.generation,
		Seq:        l.journal.seq + 1,
		Gateway:    l.cfg.Gateway,
		State:      l.state,
		LostAt:     l.lostAt,
		SavedAt:    now,
	}
	for _, name := range slices.Sorted(maps.Keys(l.journal.changed)) {
		if res, ok := l.resources[name]; ok {
			r.Upserted = append(r.Upserted, savedResource{Name: name, Version: res.version, Proto: res.body})
		} else {
			r.Removed = append(r.Removed, name)
		}
	}
	return json.Marshal(r)
}

// replay applies cluster's journal records to its snapshot s and its
// resources res, in order. Records of another generation are in the
// snapshot already (a crash between writing a snapshot and removing the
// journal it replaces), as are those at or below the last sequence
// applied: both are skipped, so a replay is harmless. An unreadable record
// or a gap in the sequence ends the replay: the records after it describe
// changes to a state this one cannot rebuild. A resource that fails
// federation.Validate is dropped and reported, as in a snapshot. It
// returns how many records it applied.
func replay(cluster string, s *savedLink, res map[string]resource, records [][]byte) (int, error) {
	var (
		applied int
		last    uint64
		errs    []error
	)
	for i, b := range records {
		var r savedRecord
		err := json.Unmarshal(b, &r)
		switch {
		case err != nil:
		case r.Format != savedFormat:
			err = fmt.Errorf("format %d, this peerd reads %d", r.Format, savedFormat)
		case r.Cluster != cluster:
			err = fmt.Errorf("cluster: says %q", r.Cluster)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("journal of link %s: record %d: %w; it and the %d after it are ignored", cluster, i+1, err, len(records)-i-1))
			break
		}
		if r.Generation != s.Generation || s.Generation == 0 || r.Seq <= last {
			continue
		}
		if r.Seq != last+1 {
			errs = append(errs, fmt.Errorf("journal of link %s: record %d: seq %d follows %d; it and the %d after it are ignored", cluster, i+1, r.Seq, last, len(records)-i-1))
			break
		}
		last = r.Seq
		for _, name := range r.Removed {
			delete(res, name)
		}
		for _, it := range r.Upserted {
			rs, err := decodeSavedResource(it)
			if err != nil {
				delete(res, it.Name)
				errs = append(errs, fmt.Errorf("journal of link %s: record %d: %s: %w", cluster, i+1, it.Name, err))
				continue
			}
			res[it.Name] = rs
		}
		s.Gateway, s.State, s.LostAt, s.SavedAt = r.Gateway, r.State, r.LostAt, r.SavedAt
		applied++
	}
	return applied, errors.Join(errs...)
}

// loadJournal replays cluster's journal, when the store keeps one, onto
// its snapshot. A torn or damaged journal is logged and counted; what
// could be applied is kept.
func (m *Manager) loadJournal(cluster string, s *savedLink, res map[string]resource) {
	j, ok := m.opts.Store.(Journal)
	if !ok {
		return
	}
	records, readErr := j.Records(cluster)
	applied, err := replay(cluster, s, res, records)
	if err = errors.Join(readErr, err); err != nil {
		m.log.Warn("saved link journal partly unreadable; the link starts from the state before the damage and its peer resends the rest",
			zap.String("cluster", cluster), zap.Int("records_applied", applied), zap.Error(err))
		m.metrics.journalDamaged.Inc()
	}
}
