package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/peerd-mesh/peerd/internal/fsutil"
	"github.com/peerd-mesh/peerd/internal/kubestate"
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

// vipStore keeps the VIP allocations of global services across restarts:
// vipDir under --state-dir in file mode, vipKube in the Kubernetes API in
// Kubernetes mode. load runs once at start; save runs on the model loop
// whenever the allocations changed.
type vipStore interface {
	// load returns the saved allocations, none when nothing was saved yet.
	// Damaged saved state is an error: starting with fresh VIPs would move
	// every global service's VIP behind the operator's back.
	load() (map[string][]netip.Addr, error)
	// save replaces the saved allocations atomically: a crash leaves the
	// old or the new ones, never half of them.
	save(map[string][]netip.Addr) error
}

// encodeVIPs is the saved form of the allocations, in every store.
func encodeVIPs(vips map[string][]netip.Addr) ([]byte, error) {
	return json.MarshalIndent(vipState{Version: 1, VIPs: vips}, "", " ")
}

// decodeVIPs reads encodeVIPs' output; where names the origin in errors.
func decodeVIPs(where string, b []byte) (map[string][]netip.Addr, error) {
	var st vipState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w (move it away to start with new VIPs)", where, err)
	}
	if st.Version != 1 {
		return nil, fmt.Errorf("%s: version %d, this peerd reads version 1", where, st.Version)
	}
	return st.VIPs, nil
}

// vipDir keeps the allocations in vipFile under dir; a zero dir keeps
// nothing.
type vipDir struct{ dir string }

func (s vipDir) load() (map[string][]netip.Addr, error) {
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
	return decodeVIPs("--state-dir: "+path, b)
}

// save writes, syncs and renames over the old file.
func (s vipDir) save(vips map[string][]netip.Addr) error {
	if s.dir == "" {
		return nil
	}
	b, err := encodeVIPs(vips)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(s.dir, vipFile), b, 0o600)
}

const (
	// vipObject is the Secret of the system namespace that holds the
	// allocations in Kubernetes mode (see internal/kubestate).
	vipObject = "peerd-vips"
	vipKind   = "vips"
	// vipKubeTimeout bounds each API call; save runs on the model loop.
	vipKubeTimeout = 10 * time.Second
)

// vipKube keeps the allocations in the Secret vipObject. Every replica
// writes its own allocations (the last writer wins; replicas that agree
// write identical bytes, and an identical write is skipped).
type vipKube struct {
	secrets   corev1client.SecretInterface
	namespace string
}

func (s vipKube) where() string { return "secret " + s.namespace + "/" + vipObject }

func (s vipKube) load() (map[string][]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), vipKubeTimeout)
	defer cancel()
	b, err := kubestate.Get(ctx, s.secrets, vipObject, vipKind)
	if err != nil {
		return nil, fmt.Errorf("VIPs of global services: namespace %s: %w", s.namespace, err)
	}
	if b == nil {
		return nil, nil
	}
	return decodeVIPs(s.where(), b)
}

func (s vipKube) save(vips map[string][]netip.Addr) error {
	b, err := encodeVIPs(vips)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), vipKubeTimeout)
	defer cancel()
	if err := kubestate.Put(ctx, s.secrets, kubestate.Object{Name: vipObject, Kind: vipKind, Payload: b}); err != nil {
		return fmt.Errorf("namespace %s: %w", s.namespace, err)
	}
	return nil
}
