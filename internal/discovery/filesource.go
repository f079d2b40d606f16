package discovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// FileSource feeds the Index from a directory of Kubernetes manifests
// (--config-dir): every *.yaml and *.yml file below it, recursively. Names
// that start with a dot are skipped, so a ConfigMap volume's `..data` and
// `..<timestamp>` directories are not read twice; the ConfigMap's files are
// read through the symlinks the kubelet puts at the top of the mount.
// Symlinked files are followed, symlinked directories are not (no loops).
//
// The first read happens synchronously in Run before the source is marked
// synced. After that every change under the directory, as reported by
// fsnotify, triggers a reload of the whole set once the events already
// queued have been drained: changes are coalesced, never delayed by a timer.
// Only files whose bytes changed are decoded and given to the Index. A file
// that becomes empty keeps its objects, because that is also what a file
// being rewritten in place looks like; delete a file to remove its objects.
type FileSource struct {
	dir    string
	source string
	idx    *Index
	log    *zap.Logger

	// Run's goroutine owns everything below.
	contents map[string][]byte // the bytes last read, per file
	watched  map[string]bool   // directories with an fsnotify watch
	reported map[string]bool   // conflict errors already logged

	// onReload, when set (tests), is called after each reload with the files
	// whose bytes changed (added, edited or deleted), sorted.
	onReload func(changed []string)
}

// NewFileSource returns a source for dir and registers it with idx, so that
// idx is not synced before this source's first load.
func NewFileSource(dir string, idx *Index, log *zap.Logger) *FileSource {
	s := &FileSource{
		dir:      dir,
		source:   "files:" + dir,
		idx:      idx,
		log:      log,
		contents: map[string][]byte{},
		watched:  map[string]bool{},
		reported: map[string]bool{},
	}
	idx.Register(s.source)
	return s
}

// Source returns the name this source uses with the Index.
func (s *FileSource) Source() string { return s.source }

// Run loads the directory, marks the source synced and then follows changes
// until ctx is done (it then returns nil). It fails when the directory cannot
// be read or watched at the start; later problems are logged and reported
// through Index.Errors while the last good state stays in force.
func (s *FileSource) Run(ctx context.Context) error {
	info, err := os.Stat(s.dir)
	if err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("config dir %s: not a directory", s.dir)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config dir %s: watching: %w", s.dir, err)
	}
	defer w.Close()
	// Watch before the first read, so that nothing written in between is
	// missed: it will at worst cause one more reload.
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("config dir %s: watching: %w", s.dir, err)
	}
	s.watched[s.dir] = true
	s.reload(w)
	s.idx.MarkSynced(s.source)
	s.log.Info("config dir loaded", zap.String("dir", s.dir), zap.Int("files", len(s.contents)))

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("fsnotify event channel closed")
			}
			relevant := s.relevant(ev)
			// Coalesce: take whatever else is already queued, then reload
			// once. There is no timer: a change is never held back.
			for drained := false; !drained; {
				select {
				case ev, ok := <-w.Events:
					if !ok {
						return errors.New("fsnotify event channel closed")
					}
					relevant = s.relevant(ev) || relevant
				case err := <-w.Errors:
					relevant = s.watchError(err) || relevant
				default:
					drained = true
				}
			}
			if relevant {
				s.reload(w)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("fsnotify error channel closed")
			}
			if s.watchError(err) {
				s.reload(w)
			}
		}
	}
}

// relevant reports whether ev may change what the directory defines. An
// attribute-only change does not; everything else (including anything on
// a ConfigMap's `..data` symlink) leads to a reload of the whole set, which
// then only touches files whose bytes changed.
func (s *FileSource) relevant(ev fsnotify.Event) bool {
	return ev.Op != fsnotify.Chmod
}

// watchError logs a watcher error and reports whether to reload: after an
// overflow events were lost, so only a full re-read is safe.
func (s *FileSource) watchError(err error) bool {
	if err == nil {
		return false
	}
	s.log.Error("watching config dir", zap.String("dir", s.dir), zap.Error(err))
	return errors.Is(err, fsnotify.ErrEventOverflow)
}

// scan lists the manifest files and the directories to watch, both sorted.
func (s *FileSource) scan() (files, dirs []string, err error) {
	err = filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == s.dir {
				return err
			}
			// A directory vanished while walking; the event for it will
			// come and cause another reload.
			s.log.Debug("walking config dir", zap.String("path", path), zap.Error(err))
			return nil
		}
		if path != s.dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		if ext := filepath.Ext(d.Name()); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Stat(path)
			if err != nil || !target.Mode().IsRegular() {
				return nil // dangling or a directory: not a manifest
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		files = append(files, path)
		return nil
	})
	return files, dirs, err
}

// reload re-reads the directory and updates the Index for every file whose
// bytes changed. A file that fails keeps its last good objects in force.
func (s *FileSource) reload(w *fsnotify.Watcher) {
	files, dirs, err := s.scan()
	if err != nil {
		// The directory itself is gone or unreadable: keep everything.
		s.log.Error("reading config dir; keeping the last good state", zap.String("dir", s.dir), zap.Error(err))
		s.idx.SetError(s.source, s.dir, fmt.Errorf("config dir %s: %w", s.dir, err))
		return
	}
	s.idx.SetError(s.source, s.dir, nil)
	s.syncWatches(w, dirs)

	var changed []string
	present := make(map[string]bool, len(files))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the scan: handled as a deletion below
		}
		present[file] = true
		if err != nil {
			s.log.Error("reading manifest file; keeping its last good objects", zap.String("file", file), zap.Error(err))
			s.idx.SetError(s.source, file, fmt.Errorf("%s: %w", file, err))
			continue
		}
		old, known := s.contents[file]
		if known && bytes.Equal(old, data) {
			continue
		}
		if known && len(data) == 0 {
			// An editor saving in place truncates first and writes after;
			// reading in between sees an empty file. Without a debounce
			// timer that moment is visible here, so an emptied file keeps
			// its objects (deleting the file removes them).
			s.log.Debug("manifest file is empty; keeping its last objects", zap.String("file", file))
			continue
		}
		s.contents[file] = data
		changed = append(changed, file)
		s.apply(file, data)
	}
	for file := range s.contents {
		if present[file] {
			continue
		}
		delete(s.contents, file)
		changed = append(changed, file)
		s.idx.RemoveFile(s.source, file)
		s.idx.SetError(s.source, file, nil)
		s.log.Info("manifest file removed", zap.String("file", file))
	}
	s.logNewConflicts()
	if s.onReload != nil {
		slices.Sort(changed)
		s.onReload(changed)
	}
}

// apply decodes one file and, if it is good as a whole, makes it the file's
// set of objects.
func (s *FileSource) apply(file string, data []byte) {
	skip := func(file string, doc int, gvk schema.GroupVersionKind, name string) {
		s.log.Debug("skipping a kind peerd does not read", zap.String("file", file), zap.Int("document", doc),
			zap.String("kind", gvk.String()), zap.String("name", name))
	}
	objs, err := decodeManifests(file, data, skip)
	if err == nil {
		err = s.idx.ReplaceFile(s.source, file, objs)
	}
	if err != nil {
		s.log.Error("manifest file rejected; its last good objects stay in force", zap.String("file", file), zap.Error(err))
		s.idx.SetError(s.source, file, err)
		return
	}
	s.idx.SetError(s.source, file, nil)
	s.log.Debug("manifest file loaded", zap.String("file", file), zap.Int("objects", len(objs)))
}

// syncWatches watches every directory in dirs and forgets the others. New
// directories are read in the same reload, so files written before their
// watch existed are not missed.
func (s *FileSource) syncWatches(w *fsnotify.Watcher, dirs []string) {
	want := make(map[string]bool, len(dirs))
	for _, d := range dirs {
		want[d] = true
		if s.watched[d] {
			continue
		}
		if err := w.Add(d); err != nil {
			s.log.Error("watching config subdirectory", zap.String("dir", d), zap.Error(err))
			continue
		}
		s.watched[d] = true
	}
	for d := range s.watched {
		if !want[d] {
			// The kernel drops the watch of a removed directory itself;
			// Remove fails then, which is fine.
			_ = w.Remove(d)
			delete(s.watched, d)
		}
	}
}

// logNewConflicts logs each object conflict once when it appears; Errors
// keeps reporting it while it lasts.
func (s *FileSource) logNewConflicts() {
	now := map[string]bool{}
	for _, err := range s.idx.Errors() {
		var me *ManifestError
		if !errors.Is(err, ErrConflict) || errors.As(err, &me) {
			continue // in-file duplicates were logged with their file
		}
		msg := err.Error()
		now[msg] = true
		if !s.reported[msg] {
			s.log.Error("object defined more than once", zap.Error(err))
		}
	}
	s.reported = now
}
