package discovery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// DefaultMaxFileSize is the largest manifest file a FileSource reads unless
// told otherwise: far above any real set of manifests, far below what would
// hurt the process.
const DefaultMaxFileSize = 16 << 20

// FileSourceOptions tune a FileSource; the zero value is usable.
type FileSourceOptions struct {
	// MaxFileSize is the largest file read, in bytes (0: DefaultMaxFileSize).
	// A larger file is refused by name and its last good objects stay.
	MaxFileSize int64
	// Registerer receives the source's counters; nil keeps them unexported.
	Registerer prometheus.Registerer
}

// FileSource feeds the Index from a directory of Kubernetes manifests
// (--config-dir): every *.yaml and *.yml file below it, recursively. Names
// that start with a dot are skipped, so a ConfigMap volume's `..data` and
// `..<timestamp>` directories are not read twice; the ConfigMap's files are
// read through the symlinks the kubelet puts at the top of the mount.
// Symlinked files are followed, symlinked directories below the root are not
// (no loops).
//
// The root itself may be a symlink, or sit below one, as deploy tools lay it
// out (git-sync flips `root -> rev1` to `-> rev2`; a directory is swapped in
// with mv). Files are named by their path below the root as configured, so a
// flip that changes nothing in a file changes nothing in the Index. The
// source watches the directories holding each symlink on the way to the root
// and the root's own parent, so a root that is deleted, recreated, renamed or
// re-pointed is seen; while the root cannot be read the last good state stays
// in force and Index.Errors says why.
//
// The first read happens synchronously in Run before the source is marked
// synced. After that, once the fsnotify events already queued have been
// drained (changes are coalesced, never delayed by a timer), events that
// name manifest files only re-read those files, so a change costs what it
// touches; any other change (a directory, the root, a symlink on the way to
// it, a ConfigMap's `..data`, a lost event) reloads the whole set. Events on
// dot-files (an editor's or a tool's temporary file) are ignored: such files
// are never read, and renaming one into place is an event of its own. Only
// files whose bytes changed are decoded and given to the Index. A file
// that becomes empty keeps its objects, because that is also what a file
// being rewritten in place looks like; delete a file to remove its objects.
// A file over FileSourceOptions.MaxFileSize is refused from its size alone,
// and no read takes more than that limit into memory.
type FileSource struct {
	dir         string
	source      string
	idx         *Index
	log         *zap.Logger
	maxFileSize int64
	metrics     fileMetrics

	// Run's goroutine owns everything below.
	root     rootPath                     // what dir resolved to at the last good reload
	elements []string                     // the root's path elements at the last resolution, good or not
	tree     map[string]fs.FileInfo       // watched directories of the tree, with their identity when watched
	links    map[string]fs.FileInfo       // watched directories holding the root's path elements
	digests  map[string][sha256.Size]byte // per file, the digest of the bytes last applied
	problems map[string]problem           // per subject, the problem last logged
	reported map[string]bool              // conflict errors already logged

	// onReload, when set (tests), is called after each reload with the files
	// whose bytes changed (added, edited or deleted), sorted; onRead with
	// every file path read.
	onReload func(changed []string)
	onRead   func(path string)
}

// Reasons a file source counts a problem or a skipped document under; a
// fixed set, so metric labels never take a value from the files.
const (
	problemDirUnavailable = "dir_unavailable"
	problemTooLarge       = "too_large"
	problemUnreadable     = "unreadable"
	problemRejected       = "rejected"

	skippedUnusedKind  = "unused_kind"
	skippedUnknownKind = "unknown_kind"
)

// problem is a current problem of one subject (a file, or the root).
type problem struct{ reason, msg string }

type fileMetrics struct {
	problems *prometheus.CounterVec
	skipped  *prometheus.CounterVec
}

func newFileMetrics(reg prometheus.Registerer) fileMetrics {
	m := fileMetrics{
		problems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_config_file_problems_total",
			Help: "Problems of the config directory that keep a last good state in force, counted when they appear, by reason: dir_unavailable, too_large, unreadable, rejected.",
		}, []string{"reason"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_config_documents_skipped_total",
			Help: "Manifest documents left out, by reason: unused_kind (a Kubernetes or Gateway API kind peerd does not read), unknown_kind (a kind or version peerd does not know; logged as a warning).",
		}, []string{"reason"}),
	}
	for _, r := range []string{problemDirUnavailable, problemTooLarge, problemUnreadable, problemRejected} {
		m.problems.WithLabelValues(r)
	}
	for _, r := range []string{skippedUnusedKind, skippedUnknownKind} {
		m.skipped.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.problems, m.skipped)
	}
	return m
}

// NewFileSource returns a source for dir and registers it with idx, so that
// idx is not synced before this source's first load.
func NewFileSource(dir string, idx *Index, log *zap.Logger, opts FileSourceOptions) *FileSource {
	if opts.MaxFileSize <= 0 {
		opts.MaxFileSize = DefaultMaxFileSize
	}
	s := &FileSource{
		dir:         dir,
		source:      "files:" + dir,
		idx:         idx,
		log:         log,
		maxFileSize: opts.MaxFileSize,
		metrics:     newFileMetrics(opts.Registerer),
		tree:        map[string]fs.FileInfo{},
		links:       map[string]fs.FileInfo{},
		digests:     map[string][sha256.Size]byte{},
		problems:    map[string]problem{},
		reported:    map[string]bool{},
	}
	idx.Register(s.source)
	return s
}

// Source returns the name this source uses with the Index.
func (s *FileSource) Source() string { return s.source }

// Run loads the directory, marks the source synced and then follows changes
// until ctx is done (it then returns nil). It fails when the directory cannot
// be read or watched at the start; later problems (the directory gone, a bad
// file) are logged and reported through Index.Errors while the last good
// state stays in force.
func (s *FileSource) Run(ctx context.Context) error {
	if root := resolveRoot(s.dir); root.err != nil {
		return root.err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config dir %s: watching: %w", s.dir, err)
	}
	defer w.Close()
	// Watches are set before each read, so that nothing written in between
	// is missed: it will at worst cause one more reload.
	s.reload(w)
	if _, ok := s.tree[s.root.dir]; !ok {
		return fmt.Errorf("config dir %s: cannot be watched: %s", s.dir, s.problems[s.dir].msg)
	}
	s.idx.MarkSynced(s.source)
	s.log.Info("config dir loaded", zap.String("dir", s.dir), zap.String("resolved", s.root.dir), zap.Int("files", len(s.digests)))

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("fsnotify event channel closed")
			}
			// Coalesce: take whatever else is already queued, then reload
			// once. There is no timer: a change is never held back. Events
			// on manifest files alone reload just those files; anything
			// else (directories, the root, symlinks on the way to it, a
			// ConfigMap's `..data`) reloads the whole set.
			var full bool
			files := map[string]bool{}
			s.note(ev, files, &full)
			for drained := false; !drained; {
				select {
				case ev, ok := <-w.Events:
					if !ok {
						return errors.New("fsnotify event channel closed")
					}
					s.note(ev, files, &full)
				case err := <-w.Errors:
					full = s.watchError(err) || full
				default:
					drained = true
				}
			}
			switch {
			case full:
				s.reload(w)
			case len(files) > 0:
				s.reloadFiles(w, files)
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

// note records what ev asks to reload: the manifest file it names, nothing
// (a temporary dot-file, or a file that is no manifest), or the whole set
// (full) for anything else that is relevant: directories, the root and the
// symlinks on the way to it, a ConfigMap's `..data` and its siblings.
func (s *FileSource) note(ev fsnotify.Event, files map[string]bool, full *bool) {
	if !s.relevant(ev) {
		return
	}
	switch s.classify(ev) {
	case eventFile:
		files[ev.Name] = true
	case eventIgnored:
	default:
		*full = true
	}
}

type eventClass int

const (
	eventFull eventClass = iota
	eventFile
	eventIgnored
)

// classify sorts a relevant event: one about a single entry directly inside
// a watched directory of the tree can be handled alone; the rest needs a
// full reload.
func (s *FileSource) classify(ev fsnotify.Event) eventClass {
	if s.root.dir == "" {
		return eventFull
	}
	if _, ok := s.tree[filepath.Dir(ev.Name)]; !ok {
		return eventFull
	}
	if _, ok := s.tree[ev.Name]; ok {
		return eventFull
	}
	if _, ok := s.links[ev.Name]; ok || slices.Contains(s.elements, ev.Name) {
		return eventFull
	}
	base := filepath.Base(ev.Name)
	switch {
	case strings.HasPrefix(base, ".."):
		return eventFull // a ConfigMap mount's ..data flip re-points every file
	case strings.HasPrefix(base, "."):
		return eventIgnored // never read; renaming it into place is an event of its own
	}
	if ext := filepath.Ext(base); ext == ".yaml" || ext == ".yml" {
		return eventFile
	}
	if ev.Has(fsnotify.Create) {
		if fi, err := os.Stat(ev.Name); err != nil || fi.IsDir() {
			return eventFull // a new directory must be watched and read
		}
	}
	return eventIgnored // a file that is no manifest
}

// relevant reports whether ev may change what the directory defines: any
// change but an attribute-only one inside the tree (including a ConfigMap's
// `..data` symlink), and in the directories holding the root's path elements
// only a change of those elements (the parent of a root in /tmp sees much
// else). Whatever is relevant leads to a reload of the whole set, which
// re-resolves the root and then only touches files whose bytes changed.
func (s *FileSource) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	if _, ok := s.tree[filepath.Dir(ev.Name)]; ok {
		return true
	}
	if _, ok := s.tree[ev.Name]; ok {
		return true // the root or a subdirectory itself moved or went away
	}
	if _, ok := s.links[ev.Name]; ok {
		return true // a directory on the way to the root moved or went away
	}
	return slices.Contains(s.elements, ev.Name)
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

// rootPath is what the configured directory resolves to at one moment.
type rootPath struct {
	// dir is the resolved directory, without symlinks; empty with err.
	dir  string
	info fs.FileInfo
	err  error
	// elements are the paths (each below a resolved directory) whose change
	// changes what the root resolves to: every symlink met on the way, the
	// root's own entry in its parent, and, when resolution failed, the
	// element that is missing. Their directories are watched.
	elements []string
}

// maxSymlinks bounds symlink resolution as the kernel does (ELOOP).
const maxSymlinks = 40

// resolveRoot resolves dir element by element, as the kernel would, and
// records the path elements a deploy tool may swap: the symlinks and the
// last element.
func resolveRoot(dir string) rootPath {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return rootPath{err: fmt.Errorf("config dir %s: %w", dir, err)}
	}
	var (
		elements []string
		pending  = splitPath(abs)
		cur      = string(filepath.Separator)
		links    int
	)
	fail := func(p string, err error) rootPath {
		elements = append(elements, p)
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("%s does not exist (deleted, or being replaced?)", p)
		}
		return rootPath{elements: elements, err: fmt.Errorf("config dir %s: %w", dir, err)}
	}
	for len(pending) > 0 {
		name := pending[0]
		pending = pending[1:]
		if name == ".." {
			cur = filepath.Dir(cur)
			continue
		}
		p := filepath.Join(cur, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return fail(p, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			elements = append(elements, p)
			if links++; links > maxSymlinks {
				return fail(p, errors.New("too many levels of symbolic links"))
			}
			target, err := os.Readlink(p)
			if err != nil {
				return fail(p, err)
			}
			if filepath.IsAbs(target) {
				cur = string(filepath.Separator)
			}
			pending = append(splitPath(target), pending...)
			continue
		}
		if !fi.IsDir() {
			return fail(p, fmt.Errorf("%s is not a directory", p))
		}
		cur = p
		if len(pending) == 0 {
			elements = append(elements, p)
			return rootPath{dir: p, info: fi, elements: elements}
		}
	}
	// Only reached for "/" or a path that ends in "..": no element of it
	// can be swapped in a way worth following.
	fi, err := os.Stat(cur)
	if err != nil {
		return fail(cur, err)
	}
	return rootPath{dir: cur, info: fi, elements: elements}
}

// splitPath returns the non-empty, non-"." elements of p.
func splitPath(p string) []string {
	var out []string
	for _, e := range strings.Split(p, string(filepath.Separator)) {
		if e != "" && e != "." {
			out = append(out, e)
		}
	}
	return out
}

// followRoot resolves the root and watches the directories holding its path
// elements. It resolves again after watching, until two resolutions agree,
// so that a swap between a resolution and its watch is not missed.
func (s *FileSource) followRoot(w *fsnotify.Watcher) rootPath {
	root := resolveRoot(s.dir)
	for range maxSymlinks {
		want := map[string]fs.FileInfo{}
		for _, e := range root.elements {
			d := filepath.Dir(e)
			if fi, err := os.Stat(d); err == nil {
				want[d] = fi
			}
		}
		s.syncWatches(w, s.links, want, s.tree)
		again := resolveRoot(s.dir)
		s.elements = again.elements
		if slices.Equal(again.elements, root.elements) && again.dir == root.dir {
			break
		}
		root = again
	}
	return root
}

// scanned is one manifest file found by a scan: its name (below the root as
// configured, stable across flips) and the path it is read from.
type scanned struct{ name, path string }

// scan lists the manifest files and the directories of the tree below the
// resolved root.
func (s *FileSource) scan(root string) (files []scanned, dirs map[string]fs.FileInfo, err error) {
	dirs = map[string]fs.FileInfo{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root {
				return err
			}
			// A directory vanished while walking; the event for it will
			// come and cause another reload.
			s.log.Debug("walking config dir", zap.String("path", path), zap.Error(err))
			return nil
		}
		if path != root && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if fi, err := d.Info(); err == nil {
				dirs[path] = fi
			}
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
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		files = append(files, scanned{name: filepath.Join(s.dir, rel), path: path})
		return nil
	})
	return files, dirs, err
}

// readFile reads one manifest file within the size limit.
func (s *FileSource) readFile(path string) ([]byte, error) {
	if s.onRead != nil {
		s.onRead(path)
	}
	return readLimited(path, s.maxFileSize)
}

// ErrTooLarge is wrapped by the error for a file over the size limit.
var ErrTooLarge = errors.New("file too large")

// readLimited reads path, refusing a file over limit without reading more
// than limit+1 bytes of it (it may grow between the stat and the read).
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%w: %d bytes, over the limit of %d (--max-file-size)", ErrTooLarge, fi.Size(), limit)
	}
	var buf bytes.Buffer
	buf.Grow(int(fi.Size()) + bytes.MinRead)
	if _, err := buf.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, fmt.Errorf("%w: over the limit of %d bytes (--max-file-size)", ErrTooLarge, limit)
	}
	return buf.Bytes(), nil
}

// read is one file's state in a reload: the digest of its bytes and, when
// they differ from what was applied last, the bytes; or why they could not
// be had. Unchanged bytes are not kept, so a reload holds at most the
// changed files in memory.
type read struct {
	sum  [sha256.Size]byte
	data []byte
	err  error
}

// maxRescans bounds how often a reload starts over because a file it listed
// vanished before it was read (a swap in progress).
const maxRescans = 3

// reload re-reads the directory and updates the Index for every file whose
// bytes changed. A file that fails keeps its last good objects in force; a
// root that cannot be read keeps everything.
func (s *FileSource) reload(w *fsnotify.Watcher) {
	var (
		root    rootPath
		files   map[string]read
		changed []string
	)
	if s.onReload != nil {
		defer func() {
			slices.Sort(changed)
			s.onReload(changed)
		}()
	}
	for attempt := 1; ; attempt++ {
		var complete bool
		root, files, complete = s.gather(w)
		if root.err != nil {
			s.report(s.dir, problemDirUnavailable, root.err)
			return
		}
		if complete || attempt == maxRescans {
			break
		}
	}
	if s.root.dir != "" && s.root.dir != root.dir {
		s.log.Info("config dir now resolves elsewhere", zap.String("dir", s.dir), zap.String("from", s.root.dir), zap.String("to", root.dir))
	}
	s.root = root
	s.report(s.dir, "", nil)

	for _, name := range slices.Sorted(maps.Keys(files)) {
		if s.applyRead(name, files[name]) {
			changed = append(changed, name)
		}
	}
	for name := range s.digests {
		if _, ok := files[name]; ok {
			continue
		}
		s.removeFile(name)
		changed = append(changed, name)
	}
	// Clear what is known about files that are gone, including those that
	// were never applied (too large, unreadable).
	for subject := range s.problems {
		if _, ok := files[subject]; !ok && subject != s.dir {
			s.report(subject, "", nil)
		}
	}
	s.logNewConflicts()
}

// applyRead applies one file's read and reports whether its bytes changed.
func (s *FileSource) applyRead(name string, r read) bool {
	switch {
	case errors.Is(r.err, ErrTooLarge):
		s.report(name, problemTooLarge, fmt.Errorf("%s: %w", name, r.err))
		return false
	case r.err != nil:
		s.report(name, problemUnreadable, fmt.Errorf("%s: %w", name, r.err))
		return false
	}
	old, known := s.digests[name]
	if known && old == r.sum {
		// Readable again and unchanged: what was applied (or rejected)
		// for these bytes still holds.
		if p := s.problems[name]; p.reason == problemTooLarge || p.reason == problemUnreadable {
			s.report(name, "", nil)
		}
		return false
	}
	if known && len(r.data) == 0 {
		// An editor saving in place truncates first and writes after;
		// reading in between sees an empty file. Without a debounce
		// timer that moment is visible here, so an emptied file keeps
		// its objects (deleting the file removes them).
		s.log.Debug("manifest file is empty; keeping its last objects", zap.String("file", name))
		return false
	}
	s.digests[name] = r.sum
	s.apply(name, r.data)
	return true
}

// removeFile forgets a file that is gone, and its objects.
func (s *FileSource) removeFile(name string) {
	delete(s.digests, name)
	s.idx.RemoveFile(s.source, name)
	s.log.Info("manifest file removed", zap.String("file", name))
}

// reloadFiles re-reads only the given files (paths below the resolved
// root, from events that named nothing but them), so a change costs what it
// touches rather than a read of the whole directory. Anything unexpected,
// such as a directory under a manifest's name, falls back to a full reload.
func (s *FileSource) reloadFiles(w *fsnotify.Watcher, paths map[string]bool) {
	var changed []string
	if s.onReload != nil {
		defer func() {
			slices.Sort(changed)
			s.onReload(changed)
		}()
	}
	for _, path := range slices.Sorted(maps.Keys(paths)) {
		rel, err := filepath.Rel(s.root.dir, path)
		if err != nil {
			s.reload(w)
			return
		}
		name := filepath.Join(s.dir, rel)
		fi, err := os.Stat(path) // follows a symlinked file, as scan does
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if _, known := s.digests[name]; known {
				s.removeFile(name)
				changed = append(changed, name)
			}
			s.report(name, "", nil)
			continue
		case err == nil && fi.IsDir():
			s.reload(w)
			return
		case err == nil && !fi.Mode().IsRegular():
			continue // a dangling or special file is no manifest, as in scan
		}
		data, err := s.readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			s.reload(w) // replaced while we looked: read everything
			return
		}
		r := read{data: data, err: err}
		if err == nil {
			r.sum = sha256.Sum256(data)
		}
		if s.applyRead(name, r) {
			changed = append(changed, name)
		}
	}
	s.logNewConflicts()
}

// gather resolves the root, watches it, and reads every manifest file. It
// reports complete == false when a file it listed vanished before it could
// be read: the tree is being swapped, and a later scan will see the result.
func (s *FileSource) gather(w *fsnotify.Watcher) (root rootPath, files map[string]read, complete bool) {
	root = s.followRoot(w)
	if root.err != nil {
		return root, nil, true
	}
	var list []scanned
	// Watch what the scan found, then scan again until no directory is new,
	// so that nothing written into a new directory before its watch existed
	// is missed.
	for range maxSymlinks {
		var (
			dirs map[string]fs.FileInfo
			err  error
		)
		list, dirs, err = s.scan(root.dir)
		if err != nil {
			root.err = fmt.Errorf("config dir %s: %w", s.dir, err)
			return root, nil, true
		}
		if !s.syncWatches(w, s.tree, dirs, s.links) {
			break
		}
	}
	files = make(map[string]read, len(list))
	complete = true
	for _, f := range list {
		data, err := s.readFile(f.path)
		if errors.Is(err, fs.ErrNotExist) {
			complete = false
			continue
		}
		r := read{data: data, err: err}
		if err == nil {
			r.sum = sha256.Sum256(data)
			if old, ok := s.digests[f.name]; ok && old == r.sum {
				r.data = nil
			}
		}
		files[f.name] = r
	}
	return root, files, complete
}

// apply decodes one file and, if it is good as a whole, makes it the file's
// set of objects.
func (s *FileSource) apply(file string, data []byte) {
	skip := func(sk Skipped) {
		fields := []zap.Field{zap.String("file", sk.File), zap.Int("document", sk.Document),
			zap.String("apiVersion", sk.GVK.GroupVersion().String()), zap.String("kind", sk.GVK.Kind), zap.String("name", sk.Name)}
		if sk.Item >= 0 {
			fields = append(fields, zap.Int("item", sk.Item))
		}
		if sk.Warn {
			s.metrics.skipped.WithLabelValues(skippedUnknownKind).Inc()
			s.log.Warn("skipping a document: "+sk.Reason, fields...)
			return
		}
		s.metrics.skipped.WithLabelValues(skippedUnusedKind).Inc()
		s.log.Debug("skipping a document: "+sk.Reason, fields...)
	}
	objs, err := decodeManifests(file, data, skip)
	if err == nil {
		err = s.idx.ReplaceFile(s.source, file, objs)
	}
	if err != nil {
		s.report(file, problemRejected, err)
		return
	}
	s.report(file, "", nil)
	s.log.Debug("manifest file loaded", zap.String("file", file), zap.Int("objects", len(objs)))
}

// report records (err != nil) or clears a problem about subject in the
// Index, and logs and counts it when it is new or different: a file that
// stays too large is logged once, not on every reload.
func (s *FileSource) report(subject, reason string, err error) {
	if err == nil {
		if _, ok := s.problems[subject]; ok {
			delete(s.problems, subject)
			s.idx.SetError(s.source, subject, nil)
		}
		return
	}
	s.idx.SetError(s.source, subject, err)
	if p := (problem{reason, err.Error()}); s.problems[subject] != p {
		s.problems[subject] = p
		s.metrics.problems.WithLabelValues(reason).Inc()
		s.log.Error("config dir problem; the last good state stays in force", zap.String("subject", subject), zap.String("reason", reason), zap.Error(err))
	}
}

// syncWatches makes the watches recorded in have match want: a directory is
// watched when it is new, or when it is now another directory than the one
// watched under its name (a swap: the old watch follows the old directory),
// or when fsnotify dropped its watch (the directory was moved or deleted).
// Directories no longer wanted lose their watch unless keep still wants
// them. It reports whether a directory was newly watched.
func (s *FileSource) syncWatches(w *fsnotify.Watcher, have, want, keep map[string]fs.FileInfo) bool {
	live := map[string]bool{}
	for _, d := range w.WatchList() {
		live[d] = true
	}
	added := false
	for d, fi := range want {
		if old, ok := have[d]; ok && live[d] && os.SameFile(old, fi) {
			continue
		}
		if live[d] {
			// The name now holds another directory: drop the watch that
			// follows the old one before watching the new.
			_ = w.Remove(d)
		}
		if err := w.Add(d); err != nil {
			// Gone again already: the event for that brings another reload.
			s.log.Debug("watching config directory", zap.String("dir", d), zap.Error(err))
			delete(have, d)
			continue
		}
		have[d] = fi
		live[d] = true
		added = true
	}
	for d := range have {
		if _, ok := want[d]; ok {
			continue
		}
		delete(have, d)
		if _, ok := keep[d]; !ok && live[d] {
			// The kernel drops the watch of a removed directory itself;
			// Remove fails then, which is fine.
			_ = w.Remove(d)
		}
	}
	return added
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
