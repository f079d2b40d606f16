package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/peerd-mesh/peerd/internal/fsutil"
)

// File names of Istio's cacerts layout.
const (
	RootCertFile  = "root-cert.pem"
	RootKeyFile   = "root-key.pem"
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	CertChainFile = "cert-chain.pem"
)

// KeyAlgorithm selects the key type of generated CAs.
type KeyAlgorithm string

const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	RSA2048   KeyAlgorithm = "rsa-2048"
)

// Default validities. The root is long-lived because replacing a mesh root
// means re-issuing everything; intermediates are shorter so that a demo
// mesh still exercises the "intermediate expires before root" shape.
const (
	DefaultRootValidity         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateValidity = 5 * 365 * 24 * time.Hour
)

// ErrExists is wrapped by GenerateMesh when a target file already exists and
// MeshOptions.Force is not set.
var ErrExists = errors.New("file exists")

// MeshOptions tunes GenerateMesh. The zero value is valid.
type MeshOptions struct {
	// Algorithm of the root and intermediate keys; default ECDSAP256.
	Algorithm KeyAlgorithm
	// Organization in the CA subjects; default "peerd".
	Organization string
	// RootValidity defaults to DefaultRootValidity.
	RootValidity time.Duration
	// IntermediateValidity defaults to DefaultIntermediateValidity and is
	// capped at the root's expiry.
	IntermediateValidity time.Duration
	// Force overwrites existing files.
	Force bool
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// clusterNameRE keeps cluster names usable as one directory component on
// every OS and readable in a certificate subject.
var clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)

// GenerateMesh writes a fresh root CA to dir and, for every cluster, an
// intermediate CA signed by it in dir/<cluster>/ (see the package doc for the
// layout). Nothing is written unless every target can be written: existing
// files make it fail before any write, unless opts.Force is set. It returns
// the paths written, in write order.
func GenerateMesh(dir string, clusters []string, opts MeshOptions) ([]string, error) {
	if dir == "" {
		return nil, errors.New("certs: output directory is empty")
	}
	if len(clusters) == 0 {
		return nil, errors.New("certs: no clusters given")
	}
	seen := map[string]bool{}
	for i, c := range clusters {
		if !clusterNameRE.MatchString(c) {
			return nil, fmt.Errorf("certs: clusters[%d] %q: must be letters, digits, '.', '_' or '-', starting and ending with a letter or digit", i, c)
		}
		if c == RootCertFile || c == RootKeyFile {
			return nil, fmt.Errorf("certs: clusters[%d] %q: collides with the top-level file of that name", i, c)
		}
		if seen[c] {
			return nil, fmt.Errorf("certs: clusters[%d] %q: listed twice", i, c)
		}
		seen[c] = true
	}
	opts = opts.withDefaults()

	type file struct {
		path string
		data []byte
		mode fs.FileMode
	}
	var files []file

	now := opts.Now()
	rootKey, err := newKey(opts.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("certs: root key: %w", err)
	}
	rootTmpl, err := caTemplate(pkix.Name{Organization: []string{opts.Organization}, CommonName: "peerd root CA"},
		now, now.Add(opts.RootValidity), -1)
	if err != nil {
		return nil, err
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("certs: sign root: %w", err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, fmt.Errorf("certs: parse new root: %w", err)
	}
	rootPEM := pemCert(rootDER)
	rootKeyPEM, err := pemKey(rootKey)
	if err != nil {
		return nil, fmt.Errorf("certs: root key: %w", err)
	}
	files = append(files,
		file{filepath.Join(dir, RootCertFile), rootPEM, 0o644},
		file{filepath.Join(dir, RootKeyFile), rootKeyPEM, 0o600})

	for _, c := range clusters {
		key, err := newKey(opts.Algorithm)
		if err != nil {
			return nil, fmt.Errorf("certs: cluster %s: key: %w", c, err)
		}
		notAfter := now.Add(opts.IntermediateValidity)
		if notAfter.After(root.NotAfter) {
			notAfter = root.NotAfter
		}
		// pathlen 0: an intermediate signs workload and server leaves only,
		// which is all istiod and peerd do with it.
		tmpl, err := caTemplate(pkix.Name{
			Organization: []string{opts.Organization},
			Locality:     []string{c},
			CommonName:   "peerd intermediate CA " + c,
		}, now, notAfter, 0)
		if err != nil {
			return nil, err
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
		if err != nil {
			return nil, fmt.Errorf("certs: cluster %s: sign intermediate: %w", c, err)
		}
		keyPEM, err := pemKey(key)
		if err != nil {
			return nil, fmt.Errorf("certs: cluster %s: key: %w", c, err)
		}
		caPEM := pemCert(der)
		chain := append(append([]byte{}, caPEM...), rootPEM...)
		sub := filepath.Join(dir, c)
		files = append(files,
			file{filepath.Join(sub, RootCertFile), rootPEM, 0o644},
			file{filepath.Join(sub, CACertFile), caPEM, 0o644},
			file{filepath.Join(sub, CAKeyFile), keyPEM, 0o600},
			file{filepath.Join(sub, CertChainFile), chain, 0o644})
	}

	if !opts.Force {
		for _, f := range files {
			if _, err := os.Lstat(f.path); err == nil {
				return nil, fmt.Errorf("certs: refusing to overwrite %s: %w", f.path, ErrExists)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("certs: %s: %w", f.path, err)
			}
		}
	}
	written := make([]string, 0, len(files))
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return written, fmt.Errorf("certs: %w", err)
		}
		if err := fsutil.WriteFileAtomic(f.path, f.data, f.mode); err != nil {
			return written, fmt.Errorf("certs: %s: %w", f.path, err)
		}
		written = append(written, f.path)
	}
	return written, nil
}

func (o MeshOptions) withDefaults() MeshOptions {
	if o.Algorithm == "" {
		o.Algorithm = ECDSAP256
	}
	if o.Organization == "" {
		o.Organization = "peerd"
	}
	if o.RootValidity <= 0 {
		o.RootValidity = DefaultRootValidity
	}
	if o.IntermediateValidity <= 0 {
		o.IntermediateValidity = DefaultIntermediateValidity
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

func newKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, fmt.Errorf("algorithm %q: want %q or %q", alg, ECDSAP256, RSA2048)
	}
}

// caTemplate builds a CA certificate template. maxPathLen < 0 leaves the
// path length unconstrained.
func caTemplate(subject pkix.Name, notBefore, notAfter time.Time, maxPathLen int) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if maxPathLen >= 0 {
		t.MaxPathLen = maxPathLen
		t.MaxPathLenZero = maxPathLen == 0
	}
	return t, nil
}

// clockSkew backdates NotBefore so that a peer whose clock runs slightly
// behind ours does not reject a certificate minted a moment ago.
const clockSkew = 5 * time.Minute

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	return serial, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// pemKey encodes as PKCS#8 ("PRIVATE KEY"), which istiod, Go and OpenSSL all
// read for both ECDSA and RSA keys.
func pemKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
