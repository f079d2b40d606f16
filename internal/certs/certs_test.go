package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// genMesh generates a mesh at t0 in a fresh directory.
func genMesh(t *testing.T, clusters ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := GenerateMesh(dir, clusters, MeshOptions{Now: func() time.Time { return t0 }}); err != nil {
		t.Fatalf("GenerateMesh: %v", err)
	}
	return dir
}

func mustLoad(t *testing.T, dir string, now time.Time) *CA {
	t.Helper()
	ca, err := loadCA(dir, func() time.Time { return now })
	if err != nil {
		t.Fatalf("loadCA(%s): %v", dir, err)
	}
	return ca
}

func readPEMCerts(t *testing.T, file string) []*x509.Certificate {
	t.Helper()
	_, certs, err := readCerts(file)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestGenerateMeshLayout(t *testing.T) {
	dir := t.TempDir()
	written, err := GenerateMesh(dir, []string{"east", "west"}, MeshOptions{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		RootCertFile, RootKeyFile,
		"east/" + RootCertFile, "east/" + CACertFile, "east/" + CAKeyFile, "east/" + CertChainFile,
		"west/" + RootCertFile, "west/" + CACertFile, "west/" + CAKeyFile, "west/" + CertChainFile,
	}
	if len(written) != len(want) {
		t.Fatalf("written = %v, want %d files", written, len(want))
	}
	for i, w := range want {
		if got := written[i]; got != filepath.Join(dir, filepath.FromSlash(w)) {
			t.Errorf("written[%d] = %s, want %s", i, got, w)
		}
	}
	for _, f := range written {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		wantMode := os.FileMode(0o644)
		if strings.HasSuffix(f, "key.pem") {
			wantMode = 0o600
		}
		if st.Mode().Perm() != wantMode {
			t.Errorf("%s: mode %v, want %v", f, st.Mode().Perm(), wantMode)
		}
	}

	root := readPEMCerts(t, filepath.Join(dir, RootCertFile))[0]
	if !root.IsCA || root.Subject.String() != root.Issuer.String() {
		t.Errorf("root %s: IsCA=%v issuer=%s, want a self-signed CA", root.Subject, root.IsCA, root.Issuer)
	}
	if got := root.NotAfter.Sub(t0); got != DefaultRootValidity {
		t.Errorf("root validity = %s, want %s", got, DefaultRootValidity)
	}
	if _, ok := root.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("root key %T, want ECDSA by default", root.PublicKey)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(dir, RootCertFile))
	keyPEM, _ := os.ReadFile(filepath.Join(dir, RootKeyFile))
	if _, err := tls.X509KeyPair(rootPEM, keyPEM); err != nil {
		t.Errorf("root-key.pem does not match root-cert.pem: %v", err)
	}

	var serials []string
	for _, c := range []string{"east", "west"} {
		sub := filepath.Join(dir, c)
		ca := mustLoad(t, sub, t0)
		if !bytes.Equal(ca.RootPEM(), rootPEM) {
			t.Errorf("%s/root-cert.pem differs from the top-level root", c)
		}
		if ca.Certificate().MaxPathLen != 0 || !ca.Certificate().MaxPathLenZero {
			t.Errorf("%s: intermediate pathlen = %d, want 0", c, ca.Certificate().MaxPathLen)
		}
		if !slicesContain(ca.Certificate().Subject.Locality, c) {
			t.Errorf("%s: intermediate subject %s does not name the cluster", c, ca.Certificate().Subject)
		}
		chain := readPEMCerts(t, filepath.Join(sub, CertChainFile))
		if len(chain) != 2 || !chain[0].Equal(ca.Certificate()) || !chain[1].Equal(root) {
			t.Errorf("%s: cert-chain.pem is not [intermediate, root]", c)
		}
		keyPEM, _ := os.ReadFile(filepath.Join(sub, CAKeyFile))
		if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
			t.Errorf("%s: ca-key.pem is not a PKCS#8 PEM block", c)
		}
		serials = append(serials, ca.Certificate().SerialNumber.String())
	}
	if serials[0] == serials[1] {
		t.Error("both intermediates have the same serial number")
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestGenerateMeshRSA(t *testing.T) {
	dir := t.TempDir()
	if _, err := GenerateMesh(dir, []string{"a"}, MeshOptions{Algorithm: RSA2048}); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := ca.Certificate().PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
		t.Fatalf("intermediate key = %T, want RSA 2048", ca.Certificate().PublicKey)
	}
	verifyLeaf(t, ca, ca.Roots(), "peerd.istio-system.svc")
}

func TestGenerateMeshRefusesOverwrite(t *testing.T) {
	dir := genMesh(t, "a")
	before, _ := os.ReadFile(filepath.Join(dir, "a", CAKeyFile))

	// A second run that would also add cluster b must not write b either:
	// nothing is written unless everything can be.
	_, err := GenerateMesh(dir, []string{"b", "a"}, MeshOptions{})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), filepath.Join(dir, RootCertFile)) {
		t.Fatalf("err = %v, want ErrExists naming %s", err, RootCertFile)
	}
	if _, err := os.Stat(filepath.Join(dir, "b")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster b was written despite the refusal (stat: %v)", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "a", CAKeyFile))
	if !bytes.Equal(before, after) {
		t.Error("ca-key.pem changed although the run was refused")
	}

	if _, err := GenerateMesh(dir, []string{"a"}, MeshOptions{Force: true}); err != nil {
		t.Fatalf("forced: %v", err)
	}
	forced, _ := os.ReadFile(filepath.Join(dir, "a", CAKeyFile))
	if bytes.Equal(before, forced) {
		t.Error("forced run did not replace ca-key.pem")
	}
	if _, err := LoadCA(filepath.Join(dir, "a")); err != nil {
		t.Errorf("forced mesh does not load: %v", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "a", ".*tmp*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestGenerateMeshRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name     string
		clusters []string
		opts     MeshOptions
		want     string
	}{
		{"no clusters", nil, MeshOptions{}, "no clusters"},
		{"empty name", []string{"a", ""}, MeshOptions{}, `clusters[1] ""`},
		{"path traversal", []string{"../x"}, MeshOptions{}, `clusters[0] "../x"`},
		{"separator", []string{"a/b"}, MeshOptions{}, `clusters[0] "a/b"`},
		{"duplicate", []string{"a", "b", "a"}, MeshOptions{}, `clusters[2] "a": listed twice`},
		{"collides with top-level file", []string{RootKeyFile}, MeshOptions{}, "collides"},
		{"unknown algorithm", []string{"a"}, MeshOptions{Algorithm: "dsa"}, `"dsa"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := GenerateMesh(dir, tc.clusters, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("files written despite the error: %v", entries)
			}
		})
	}
}

// verifyLeaf mints a leaf and verifies it the way a TLS client would: the
// presented chain as intermediates, only the given roots as trust.
func verifyLeaf(t *testing.T, ca *CA, roots []*x509.Certificate, name string) {
	t.Helper()
	if err := verifyMinted(ca, roots, name); err != nil {
		t.Fatal(err)
	}
}

func verifyMinted(ca *CA, roots []*x509.Certificate, name string) error {
	c, err := ca.ServerCertificate([]string{name}, time.Hour)
	if err != nil {
		return err
	}
	return verifyChain(c, roots, name, ca.now())
}

func verifyChain(c tls.Certificate, roots []*x509.Certificate, name string, now time.Time) error {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		inter.AddCert(ic)
	}
	_, err := c.Leaf.Verify(x509.VerifyOptions{
		DNSName:       name,
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

func TestServerCertificate(t *testing.T) {
	dir := genMesh(t, "a")
	now := t0.Add(time.Hour)
	ca := mustLoad(t, filepath.Join(dir, "a"), now)
	sans := []string{"peerd.istio-system.svc", "istiod.istio-system.svc", "127.0.0.1"}
	c, err := ca.ServerCertificate(sans, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := c.Leaf
	if got := strings.Join(leaf.DNSNames, ","); got != "peerd.istio-system.svc,istiod.istio-system.svc" {
		t.Errorf("DNS SANs = %s", got)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("IP SANs = %v, want [127.0.0.1]", leaf.IPAddresses)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("EKU = %v, want [ServerAuth]", leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if !leaf.NotAfter.Equal(now.Add(2 * time.Hour)) {
		t.Errorf("NotAfter = %s, want now+2h", leaf.NotAfter)
	}
	if len(c.Certificate) != 3 || !bytes.Equal(c.Certificate[1], ca.Certificate().Raw) || !bytes.Equal(c.Certificate[2], ca.Roots()[0].Raw) {
		t.Errorf("TLS chain is not [leaf, intermediate, root]")
	}
	// The root alone is enough trust.
	for _, name := range sans[:2] {
		if err := verifyChain(c, ca.Roots(), name, now); err != nil {
			t.Errorf("verify as %s: %v", name, err)
		}
	}
	if err := verifyChain(c, ca.Roots(), "other.istio-system.svc", now); err == nil {
		t.Error("leaf verified for a name it does not carry")
	}

	if _, err := ca.ServerCertificate(nil, time.Hour); err == nil {
		t.Error("no SANs: want an error")
	}
	if _, err := ca.ServerCertificate([]string{"a", ""}, time.Hour); err == nil || !strings.Contains(err.Error(), "sans[1]") {
		t.Errorf("empty SAN: err = %v, want it to name sans[1]", err)
	}
	if _, err := ca.ServerCertificate([]string{"a"}, -time.Second); err == nil {
		t.Error("negative ttl: want an error")
	}
	d, err := ca.ServerCertificate([]string{"a"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Leaf.NotAfter.Sub(now); got != DefaultServerTTL {
		t.Errorf("zero ttl gave %s, want %s", got, DefaultServerTTL)
	}
}

func TestServerCertificateNeverOutlivesIntermediate(t *testing.T) {
	dir := genMesh(t, "a")
	ca := mustLoad(t, filepath.Join(dir, "a"), t0)
	ca.now = func() time.Time { return ca.Certificate().NotAfter.Add(-time.Hour) }
	c, err := ca.ServerCertificate([]string{"x"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Leaf.NotAfter.Equal(ca.Certificate().NotAfter) {
		t.Errorf("leaf NotAfter %s, want the intermediate's %s", c.Leaf.NotAfter, ca.Certificate().NotAfter)
	}
	ca.now = func() time.Time { return ca.Certificate().NotAfter.Add(time.Second) }
	if _, err := ca.ServerCertificate([]string{"x"}, time.Hour); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("minting with an expired intermediate: err = %v, want expired", err)
	}
}

func TestLeafFromAnotherMeshIsRejected(t *testing.T) {
	mine := mustLoad(t, filepath.Join(genMesh(t, "a"), "a"), t0)
	other := mustLoad(t, filepath.Join(genMesh(t, "a"), "a"), t0)
	err := verifyMinted(other, mine.Roots(), "peerd.istio-system.svc")
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Fatalf("leaf of another mesh verified against my root: err = %v, want UnknownAuthorityError", err)
	}
	// Same mesh, other cluster: shares the root, so it must verify.
	dir := genMesh(t, "a", "b")
	a := mustLoad(t, filepath.Join(dir, "a"), t0)
	b := mustLoad(t, filepath.Join(dir, "b"), t0)
	verifyLeaf(t, b, a.Roots(), "peerd.istio-system.svc")
}

// writeLeafAsCA overwrites ca-cert.pem/ca-key.pem with a non-CA certificate
// signed by the root, so only the "is a CA" check can fail.
func writeLeafAsCA(t *testing.T, meshDir, sub string) {
	t.Helper()
	rootCert := readPEMCerts(t, filepath.Join(meshDir, RootCertFile))[0]
	rootKey, err := readKey(filepath.Join(meshDir, RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: "not a ca"},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(time.Hour),
		BasicConstraintsValid: true,
	}, rootCert, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pemKey(key)
	os.WriteFile(filepath.Join(sub, CACertFile), pemCert(der), 0o644)
	os.WriteFile(filepath.Join(sub, CAKeyFile), keyPEM, 0o600)
}

func TestLoadCAErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, mesh, sub, otherMesh string)
		now    time.Time
		file   string // the error must name this file of sub
		want   string
	}{
		{
			name: "missing ca-key.pem",
			break_: func(t *testing.T, mesh, sub, _ string) {
				os.Remove(filepath.Join(sub, CAKeyFile))
			},
			file: CAKeyFile, want: "no such file",
		},
		{
			name: "chain does not lead to its root-cert",
			break_: func(t *testing.T, mesh, sub, other string) {
				copyFile(t, filepath.Join(other, RootCertFile), filepath.Join(sub, RootCertFile))
			},
			file: CertChainFile, want: "does not lead from ca-cert.pem to a root in",
		},
		{
			name: "key does not match ca-cert",
			break_: func(t *testing.T, mesh, sub, other string) {
				copyFile(t, filepath.Join(other, "a", CAKeyFile), filepath.Join(sub, CAKeyFile))
			},
			file: CAKeyFile, want: "does not match",
		},
		{
			name: "cert-chain does not start with ca-cert",
			break_: func(t *testing.T, mesh, sub, other string) {
				copyFile(t, filepath.Join(mesh, "b", CertChainFile), filepath.Join(sub, CertChainFile))
			},
			file: CertChainFile, want: "first certificate",
		},
		{
			name: "cert-chain out of order",
			break_: func(t *testing.T, mesh, sub, other string) {
				ca, _ := os.ReadFile(filepath.Join(sub, CACertFile))
				root, _ := os.ReadFile(filepath.Join(sub, RootCertFile))
				otherRoot, _ := os.ReadFile(filepath.Join(other, RootCertFile))
				os.WriteFile(filepath.Join(sub, CertChainFile), append(append(ca, otherRoot...), root...), 0o644)
			},
			file: CertChainFile, want: "certificate 0 (CN=peerd intermediate CA a,O=peerd,L=a) is not signed by certificate 1",
		},
		{
			name:   "ca-cert is not a CA",
			break_: func(t *testing.T, mesh, sub, _ string) { writeLeafAsCA(t, mesh, sub) },
			file:   CACertFile, want: "is not a CA certificate",
		},
		{
			name:   "ca-cert expired",
			break_: func(*testing.T, string, string, string) {},
			now:    t0.Add(DefaultIntermediateValidity + time.Second),
			file:   CACertFile, want: "expired at",
		},
		{
			name: "root-cert holds a key",
			break_: func(t *testing.T, mesh, sub, _ string) {
				copyFile(t, filepath.Join(sub, CAKeyFile), filepath.Join(sub, RootCertFile))
			},
			file: RootCertFile, want: `type "PRIVATE KEY", want CERTIFICATE`,
		},
		{
			name: "empty cert-chain",
			break_: func(t *testing.T, mesh, sub, _ string) {
				os.WriteFile(filepath.Join(sub, CertChainFile), nil, 0o644)
			},
			file: CertChainFile, want: "no PEM certificate",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mesh := genMesh(t, "a", "b")
			other := genMesh(t, "a")
			sub := filepath.Join(mesh, "a")
			tc.break_(t, mesh, sub, other)
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			_, err := loadCA(sub, func() time.Time { return now })
			if err == nil {
				t.Fatal("loadCA succeeded, want an error")
			}
			if !strings.Contains(err.Error(), filepath.Join(sub, tc.file)) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant it to name %s and contain %q", err, tc.file, tc.want)
			}
		})
	}
}

func TestLoadCAAcceptsOpenSSLKeyFormats(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSAP256, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			dir := t.TempDir()
			if _, err := GenerateMesh(dir, []string{"a"}, MeshOptions{Algorithm: alg, Now: func() time.Time { return t0 }}); err != nil {
				t.Fatal(err)
			}
			sub := filepath.Join(dir, "a")
			k, err := readKey(filepath.Join(sub, CAKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			var out []byte
			switch k := k.(type) {
			case *ecdsa.PrivateKey:
				der, err := x509.MarshalECPrivateKey(k)
				if err != nil {
					t.Fatal(err)
				}
				// `openssl ecparam -genkey` writes the curve first.
				out = append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
					pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
			case *rsa.PrivateKey:
				out = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
			}
			os.WriteFile(filepath.Join(sub, CAKeyFile), out, 0o600)
			verifyLeaf(t, mustLoad(t, sub, t0), readPEMCerts(t, filepath.Join(dir, RootCertFile)), "x.y.svc")
		})
	}
}

func TestServerTLSConfigRotates(t *testing.T) {
	dir := genMesh(t, "a")
	ca := mustLoad(t, filepath.Join(dir, "a"), t0)
	clock := &fakeClock{t: t0}
	ca.now = clock.Now
	cfg, err := ca.ServerTLSConfig([]string{"peerd.istio-system.svc"}, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	get := func() *x509.Certificate {
		t.Helper()
		c, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf
	}
	first := get()
	clock.Set(t0.Add(2*time.Hour - time.Second)) // just before 2/3 of 3h
	if got := get(); !got.Equal(first) {
		t.Fatal("re-minted before two thirds of the lifetime")
	}
	clock.Set(t0.Add(2 * time.Hour))
	second := get()
	if second.Equal(first) {
		t.Fatal("not re-minted at two thirds of the lifetime")
	}
	if !second.NotAfter.Equal(t0.Add(5 * time.Hour)) {
		t.Errorf("renewed NotAfter = %s, want now+3h", second.NotAfter)
	}
	if err := verifyChain(tls.Certificate{Certificate: [][]byte{second.Raw, ca.Certificate().Raw}, Leaf: second},
		ca.Roots(), "peerd.istio-system.svc", clock.Now()); err != nil {
		t.Errorf("renewed leaf does not verify: %v", err)
	}
	if got := get(); !got.Equal(second) {
		t.Error("re-minted again right after a renewal")
	}

	// A failed renewal keeps serving the still-valid certificate; once that
	// has expired, handshakes fail instead of serving an expired one.
	ca.now = func() time.Time { return ca.Certificate().NotAfter.Add(time.Minute) }
	if _, err := cfg.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Error("GetCertificate after both leaf and intermediate expired: want an error")
	}
}

func TestServerTLSConfigRejectsBadSANs(t *testing.T) {
	ca := mustLoad(t, filepath.Join(genMesh(t, "a"), "a"), t0)
	if _, err := ca.ServerTLSConfig(nil, time.Hour); err == nil {
		t.Fatal("ServerTLSConfig with no SANs: want an error at construction")
	}
}

// handshake runs one TLS connection over loopback and reports the client's
// error (nil when the client verified the server and read its greeting).
func handshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if conn.(*tls.Conn).Handshake() == nil {
			io.WriteString(conn, "hello")
		}
	}()
	defer func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server goroutine did not finish")
		}
	}()
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), client)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if string(b) != "hello" {
		t.Fatalf("read %q, want hello", b)
	}
	return nil
}

func TestTLSHandshakeOverLoopback(t *testing.T) {
	mesh := genMesh(t, "a")
	other := genMesh(t, "a")
	ca, err := LoadCA(filepath.Join(mesh, "a"))
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.ServerTLSConfig([]string{"peerd.istio-system.svc", "istiod.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name       string
		root       string
		serverName string
		wantErr    string
	}{
		{"mesh root trusts peerd", filepath.Join(mesh, RootCertFile), "peerd.istio-system.svc", ""},
		{"mesh root trusts istiod name", filepath.Join(mesh, RootCertFile), "istiod.istio-system.svc", ""},
		{"another mesh's root is rejected", filepath.Join(other, RootCertFile), "peerd.istio-system.svc", "unknown authority"},
		{"wrong server name is rejected", filepath.Join(mesh, RootCertFile), "peerd.other.svc", "not peerd.other.svc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, err := ClientTLSConfig(tc.root, tc.serverName)
			if err != nil {
				t.Fatal(err)
			}
			err = handshake(t, server, client)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("handshake err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestClientTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ClientTLSConfig(filepath.Join(dir, "missing.pem"), "x"); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("missing file: err = %v, want it named", err)
	}
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not pem"), 0o644)
	if _, err := ClientTLSConfig(junk, "x"); err == nil || !strings.Contains(err.Error(), "junk.pem: no PEM certificate") {
		t.Errorf("junk file: err = %v", err)
	}
}

// TestServerTLSConfigConcurrentHandshakes: handshakes racing a renewal all
// get a certificate valid at their time (run with -race).
func TestServerTLSConfigConcurrentHandshakes(t *testing.T) {
	ca := mustLoad(t, filepath.Join(genMesh(t, "a"), "a"), t0)
	clock := &fakeClock{t: t0}
	ca.now = clock.Now
	cfg, err := ca.ServerTLSConfig([]string{"x"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 8 {
				if i == 0 {
					clock.Set(t0.Add(time.Duration(j) * 30 * time.Minute))
				}
				now := clock.Now()
				c, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
				if err != nil {
					errs <- err
					return
				}
				if !now.Before(c.Leaf.NotAfter) {
					errs <- fmt.Errorf("at %s got a certificate that expired at %s", now, c.Leaf.NotAfter)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
