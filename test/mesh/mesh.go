package mesh

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerd-mesh/peerd/test/ports"
)

// Defaults of Options.
const (
	DefaultStaleTTL    = 30 * time.Second
	DefaultSyncTimeout = 10 * time.Second
	// SystemNamespace and ServiceAccount make peerd's identity
	// spiffe://<trust domain>/ns/istio-system/sa/peerd in every cluster.
	SystemNamespace = "istio-system"
	ServiceAccount  = "peerd"
	// LinkNamespace holds the istio-remote Gateways, as `peerd link` (and
	// istioctl multicluster link) puts them.
	LinkNamespace = "istio-gateways"
	// GatewayServiceAccount is the remote east-west gateway's service
	// account named on every link.
	GatewayServiceAccount = "istio-eastwest"
)

// ClusterSpec describes one cluster of the mesh.
type ClusterSpec struct {
	Name    string // cluster id, e.g. cluster1
	Network string // default: the name
	// TrustDomain of the cluster; default "<name>.local" (each cluster its
	// own, as the operator's guide allows).
	TrustDomain string
	// Region and Zone of the cluster's east-west gateway: the locality the
	// links to it carry.
	Region, Zone string
	// Manifests is copied into the cluster's config dir.
	Manifests string
	// CADir replaces the cluster's intermediate from the mesh's `peerd
	// certs` (e.g. one under another root, for a rogue cluster).
	CADir string
	// Args are extra `peerd serve` flags for this cluster.
	Args []string
}

// Options describe a mesh.
type Options struct {
	// Binary is the peerd binary (see Build).
	Binary   string
	Clusters []ClusterSpec
	// Dir holds every cluster's config, CA and state dirs and logs; it must
	// exist. Close leaves it (tests pass t.TempDir()).
	Dir string
	// NoLinks starts the clusters unlinked; Link adds links one way.
	NoLinks bool
	// StaleTTL and SyncTimeout are --peer-stale-ttl and --peer-sync-timeout
	// (defaults DefaultStaleTTL, DefaultSyncTimeout).
	StaleTTL, SyncTimeout time.Duration
	// Args are extra `peerd serve` flags for every cluster.
	Args []string
	// LogFiles also writes each peerd's output to <Dir>/<cluster>.log.
	LogFiles bool
}

// Mesh is a set of running peerds on loopback, each with its own config
// dir, intermediate CA, state dir and east-west gateway relay.
type Mesh struct {
	opts     Options
	PKI      string // output of `peerd certs`: root-cert.pem, <cluster>/...
	Clusters []*Cluster
	closers  []func()
}

// Build compiles cmd/peerd into dir and returns the binary's path. It runs
// `go build` in the module that holds this package, so it works from a
// test's working directory and from the repository root alike.
func Build(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "peerd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/peerd-mesh/peerd/cmd/peerd")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building peerd: %w\n%s", err, b)
	}
	return out, nil
}

// MainWithPeerd is a TestMain body for packages that run the real binary:
// it builds cmd/peerd once into a temporary directory, points *binary at
// it, runs the tests and removes the directory. It does not return.
func MainWithPeerd(m *testing.M, binary *string) {
	dir, err := os.MkdirTemp("", "peerd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *binary, err = Build(context.Background(), dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Start writes every cluster's directories, starts the relays, writes the
// links (every pair, both ways, unless NoLinks) and starts every peerd, then
// waits until each is ready. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *Mesh, err error) {
	if opts.Binary == "" || opts.Dir == "" || len(opts.Clusters) == 0 {
		return nil, errors.New("mesh: Options.Binary, Dir and Clusters are required")
	}
	if opts.StaleTTL == 0 {
		opts.StaleTTL = DefaultStaleTTL
	}
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = DefaultSyncTimeout
	}
	m := &Mesh{opts: opts, PKI: filepath.Join(opts.Dir, "pki")}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	names := make([]string, len(opts.Clusters))
	for i, s := range opts.Clusters {
		names[i] = s.Name
	}
	if b, err := exec.CommandContext(ctx, opts.Binary, "certs", "--out", m.PKI, "--clusters", strings.Join(names, ",")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mesh: peerd certs: %w\n%s", err, b)
	}
	for _, s := range opts.Clusters {
		c, err := m.newCluster(s)
		if err != nil {
			return nil, fmt.Errorf("mesh: cluster %s: %w", s.Name, err)
		}
		m.Clusters = append(m.Clusters, c)
	}
	if !opts.NoLinks {
		for _, from := range m.Clusters {
			for _, to := range m.Clusters {
				if from != to {
					if err := from.Link(to, LinkOptions{}); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	for _, c := range m.Clusters {
		if err := c.start(); err != nil {
			return nil, err
		}
	}
	for _, c := range m.Clusters {
		if err := c.WaitReady(ctx); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Mesh) newCluster(s ClusterSpec) (*Cluster, error) {
	if s.Network == "" {
		s.Network = s.Name
	}
	if s.TrustDomain == "" {
		s.TrustDomain = s.Name + ".local"
	}
	root := filepath.Join(m.opts.Dir, s.Name)
	c := &Cluster{
		ClusterSpec: s,
		mesh:        m,
		ConfigDir:   filepath.Join(root, "config"),
		CADir:       s.CADir,
		StateDir:    filepath.Join(root, "state"),
		logs:        &logBuffer{},
	}
	if c.CADir == "" {
		c.CADir = filepath.Join(m.PKI, s.Name)
	}
	for _, d := range []string{c.ConfigDir, c.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if s.Manifests != "" {
		if err := copyManifests(s.Manifests, c.ConfigDir); err != nil {
			return nil, err
		}
	}
	if m.opts.LogFiles {
		f, err := os.Create(filepath.Join(m.opts.Dir, s.Name+".log"))
		if err != nil {
			return nil, err
		}
		c.logs.file = f
		m.closers = append(m.closers, func() { f.Close() })
	}
	var err error
	if c.ListenAddr, err = freePort(); err != nil {
		return nil, err
	}
	if c.PlaintextAddr, err = freePort(); err != nil {
		return nil, err
	}
	if c.MonitoringAddr, err = freePort(); err != nil {
		return nil, err
	}
	if c.Relay, err = NewRelay(c.ListenAddr); err != nil {
		return nil, err
	}
	return c, nil
}

// Cluster returns the cluster with that name, or nil.
func (m *Mesh) Cluster(name string) *Cluster {
	for _, c := range m.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// RootCert is the mesh root (what a ztunnel trusts).
func (m *Mesh) RootCert() string { return filepath.Join(m.PKI, "root-cert.pem") }

// Close stops every peerd (gracefully, then by force) and every relay. It
// is safe to call more than once.
func (m *Mesh) Close() {
	var wg sync.WaitGroup
	for _, c := range m.Clusters {
		wg.Add(1)
		go func() { defer wg.Done(); c.Stop() }()
	}
	wg.Wait()
	for _, c := range m.Clusters {
		if c.Relay != nil {
			c.Relay.Close()
		}
	}
	for _, f := range m.closers {
		f()
	}
	m.closers = nil
}

// freePort picks a loopback port for a child process (see test/ports:
// outside the ephemeral range, so no client connection takes it first).
func freePort() (string, error) { return ports.Free() }
