package serve

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// vipFile is the file under --state-dir that keeps the VIPs of global
// services, so a restarted peerd gives every hostname the VIP it had: a
// ztunnel's DNS answers and open connections stay valid.
const vipFile = "vips.json"

// vipState is vipFile's content. Version guards against a future layout
// being misread.
type vipState struct {
	Version int                     `json:"version"`
	VIPs    map[string][]netip.Addr `json:"vips"`
}

// vipStore reads and writes vipFile; a zero dir keeps nothing.
type vipStore struct{ dir string }

// load returns the saved allocations; none when there is no state dir or no
// file yet. A damaged file is an error: starting with fresh VIPs would move
// every global service's VIP behind the operator's back.
func (s vipStore) load() (map[string][]netip.Addr, error) {
	if s.dir == "" {
		return nil, nil
	}
	path := filepath.Join(s.dir, vipFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	var st vipState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("--state-dir: %s: %w (move it away to start with new VIPs)", path, err)
	}
	if st.Version != 1 {
		return nil, fmt.Errorf("--state-dir: %s: version %d, this peerd reads version 1", path, st.Version)
	}
	return st.VIPs, nil
}

// save replaces the file atomically (write, sync, rename), so a crash
// leaves either the old or the new allocations, never half of them.
func (s vipStore) save(vips map[string][]netip.Addr) error {
	if s.dir == "" {
		return nil
	}
	b, err := json.MarshalIndent(vipState{Version: 1, VIPs: vips}, "", " ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(s.dir, vipFile), b)
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
