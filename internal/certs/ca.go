package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultServerTTL is the lifetime of a minted serving certificate when the
// caller passes zero. Short on purpose: rotation is automatic.
const DefaultServerTTL = 24 * time.Hour

// DefaultLeafTTL is the lifetime of peerd's own identity certificate
// (IdentityCertificate) when the caller passes zero. It is what Istio gives
// workload certificates. A shorter life would buy nothing here: the leaf is
// minted in-process by the intermediate whose key lives in the same memory,
// so whoever could steal the leaf's key holds the intermediate's too; and
// the leaf is re-minted at two thirds of its life and at once after a CA
// reload, so a rotated intermediate or root never waits for it to expire.
const DefaultLeafTTL = 24 * time.Hour

// CA is an intermediate CA loaded from a cacerts directory. It is immutable
// and safe for concurrent use.
type CA struct {
	dir     string
	roots   []*x509.Certificate // root-cert.pem (a bundle may hold several during a root rotation)
	rootPEM []byte
	cert    *x509.Certificate // ca-cert.pem
	key     crypto.Signer     // ca-key.pem
	chain   [][]byte          // cert-chain.pem, DER, starting with ca-cert
	now     func() time.Time
}

// LoadCA reads and validates a cacerts directory: ca-cert.pem must be a CA
// certificate valid now, ca-key.pem its private key, and cert-chain.pem must
// start with ca-cert.pem, be ordered (each certificate signed by the next)
// and verify up to a root in root-cert.pem. Errors name the file.
func LoadCA(dir string) (*CA, error) {
	return loadCA(dir, time.Now)
}

func loadCA(dir string, now func() time.Time) (*CA, error) {
	path := func(f string) string { return filepath.Join(dir, f) }

	rootPEM, roots, err := readCerts(path(RootCertFile))
	if err != nil {
		return nil, err
	}
	for i, r := range roots {
		if !r.IsCA {
			return nil, fmt.Errorf("certs: %s: certificate %d (%s): not a CA certificate", path(RootCertFile), i, r.Subject)
		}
	}

	_, caCerts, err := readCerts(path(CACertFile))
	if err != nil {
		return nil, err
	}
	cert := caCerts[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("certs: %s: %s is not a CA certificate (basicConstraints CA:false or missing)", path(CACertFile), cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("certs: %s: %s: keyUsage lacks certSign", path(CACertFile), cert.Subject)
	}
	t := now()
	if t.After(cert.NotAfter) {
		return nil, fmt.Errorf("certs: %s: %s expired at %s", path(CACertFile), cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if t.Before(cert.NotBefore) {
		return nil, fmt.Errorf("certs: %s: %s is not valid before %s", path(CACertFile), cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339))
	}

	key, err := readKey(path(CAKeyFile))
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("certs: %s: private key does not match the public key of %s", path(CAKeyFile), path(CACertFile))
	}

	_, chain, err := readCerts(path(CertChainFile))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(chain[0].Raw, cert.Raw) {
		return nil, fmt.Errorf("certs: %s: first certificate (%s) is not %s (%s)", path(CertChainFile), chain[0].Subject, CACertFile, cert.Subject)
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("certs: %s: certificate %d (%s) is not signed by certificate %d (%s): %w",
				path(CertChainFile), i, chain[i].Subject, i+1, chain[i+1].Subject, err)
		}
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: inter,
		CurrentTime:   t,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("certs: %s: does not lead from %s to a root in %s: %w",
			path(CertChainFile), CACertFile, path(RootCertFile), err)
	}

	ca := &CA{dir: dir, roots: roots, rootPEM: rootPEM, cert: cert, key: key, now: now}
	for _, c := range chain {
		ca.chain = append(ca.chain, c.Raw)
	}
	return ca, nil
}

// Dir is the directory the CA was loaded from.
func (ca *CA) Dir() string { return ca.dir }

// Certificate is the intermediate (ca-cert.pem).
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// RootPEM is the content of root-cert.pem: what clients should trust.
func (ca *CA) RootPEM() []byte { return bytes.Clone(ca.rootPEM) }

// Roots are the certificates of root-cert.pem.
func (ca *CA) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), ca.roots...) }

// ServerCertificate mints a serving certificate for the given SANs (DNS
// names; entries that parse as IP addresses become IP SANs) with the
// ServerAuth extended key usage, valid for ttl (DefaultServerTTL when zero)
// but never past the intermediate's own expiry. Its chain is the leaf
// followed by cert-chain.pem, so a client that trusts only the root
// verifies it.
func (ca *CA) ServerCertificate(sans []string, ttl time.Duration) (tls.Certificate, error) {
	if len(sans) == 0 {
		return tls.Certificate{}, errors.New("certs: server certificate: no subject alternative names")
	}
	return ca.mint(leafSpec{
		what:   "server certificate",
		sans:   sans,
		ttl:    ttl,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// IdentityCertificate mints peerd's own certificate: the URI SAN is id's
// SPIFFE ID, sans are the DNS names and IP addresses its TLS listener
// answers to (ztunnel checks those; peers check the SPIFFE ID), and it
// serves both ends of a mutual TLS link (ServerAuth and ClientAuth). The
// lifetime and chain are as for ServerCertificate (ttl zero:
// DefaultLeafTTL).
func (ca *CA) IdentityCertificate(id Identity, sans []string, ttl time.Duration) (tls.Certificate, error) {
	if err := id.Validate(); err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: identity certificate: %w", err)
	}
	if ttl == 0 {
		ttl = DefaultLeafTTL
	}
	return ca.mint(leafSpec{
		what:   "identity certificate " + id.String(),
		sans:   sans,
		uris:   []*url.URL{id.URI()},
		ttl:    ttl,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

// leafSpec is what distinguishes the leaves a CA mints.
type leafSpec struct {
	what   string // for errors: "server certificate"
	sans   []string
	uris   []*url.URL
	ttl    time.Duration
	usages []x509.ExtKeyUsage
}

func (ca *CA) mint(spec leafSpec) (tls.Certificate, error) {
	if spec.ttl < 0 {
		return tls.Certificate{}, fmt.Errorf("certs: %s: ttl %s is negative", spec.what, spec.ttl)
	}
	if spec.ttl == 0 {
		spec.ttl = DefaultServerTTL
	}
	now := ca.now()
	if !now.Before(ca.cert.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("certs: %s: %s: %s expired at %s", spec.what, filepath.Join(ca.dir, CACertFile),
			ca.cert.Subject, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		URIs:        spec.uris,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: spec.usages,
	}
	for i, s := range spec.sans {
		switch ip := net.ParseIP(s); {
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		case s == "":
			return tls.Certificate{}, fmt.Errorf("certs: %s: sans[%d] is empty", spec.what, i)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	if len(spec.sans) > 0 {
		tmpl.Subject = pkix.Name{CommonName: spec.sans[0]}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %s: key: %w", spec.what, err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return tls.Certificate{}, err
	}
	tmpl.NotAfter = now.Add(spec.ttl)
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	tmpl.NotBefore = now.Add(-clockSkew)
	if tmpl.NotBefore.Before(ca.cert.NotBefore) {
		tmpl.NotBefore = ca.cert.NotBefore
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %s: sign with %s: %w", spec.what, filepath.Join(ca.dir, CACertFile), err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %s: parse: %w", spec.what, err)
	}
	return tls.Certificate{
		Certificate: append([][]byte{der}, ca.chain...),
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// ServerTLSConfig returns a server *tls.Config whose certificate is minted by
// ServerCertificate and re-minted once two thirds of its lifetime have
// passed, so a long-running listener never serves an expired certificate.
// The first certificate is minted here, so configuration errors surface at
// start-up rather than on the first handshake.
func (ca *CA) ServerTLSConfig(sans []string, ttl time.Duration) (*tls.Config, error) {
	sans = append([]string(nil), sans...)
	r := &rotator{
		ca:   func() *CA { return ca },
		now:  func() time.Time { return ca.now() },
		mint: func(ca *CA) (tls.Certificate, error) { return ca.ServerCertificate(sans, ttl) },
	}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() },
	}, nil
}

// rotator caches the current leaf: it mints a new one once two thirds of
// the current one's lifetime have passed (as Istio's workload certificates
// rotate well before expiry, so a slow or failed renewal has time to be
// retried), and at once when the CA it was minted by has been replaced.
type rotator struct {
	ca   func() *CA // the CA to mint with now
	now  func() time.Time
	mint func(*CA) (tls.Certificate, error)

	mu      sync.Mutex // guards cur, curCA and renewAt
	cur     *tls.Certificate
	curCA   *CA // minted cur
	renewAt time.Time
}

func (r *rotator) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	ca := r.ca()
	if r.cur != nil && ca == r.curCA && now.Before(r.renewAt) {
		return r.cur, nil
	}
	c, err := r.mint(ca)
	if err != nil {
		// A failed renewal must not take the listener down while the
		// current certificate is still good. curCA stays, so the next
		// handshake tries again.
		if r.cur != nil && now.Before(r.cur.Leaf.NotAfter) {
			return r.cur, nil
		}
		return nil, err
	}
	r.cur, r.curCA = &c, ca
	r.renewAt = now.Add(c.Leaf.NotAfter.Sub(now) * 2 / 3)
	return r.cur, nil
}

// ClientTLSConfig returns a client *tls.Config that trusts only the
// certificates in rootPEMFile and expects serverName in the server's
// certificate. For tools and tests that talk to peerd's TLS listener.
func ClientTLSConfig(rootPEMFile, serverName string) (*tls.Config, error) {
	_, roots, err := readCerts(rootPEMFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		ServerName: serverName,
	}, nil
}

// readCerts parses every CERTIFICATE block of a PEM file; at least one is
// required. Other block types are an error: a key in a certificate file is
// a mistake worth reporting.
func readCerts(file string) ([]byte, []*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	var certs []*x509.Certificate
	rest := data
	for i := 0; ; i++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("certs: %s: PEM block %d: type %q, want CERTIFICATE", file, i, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("certs: %s: PEM block %d: %w", file, i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("certs: %s: no PEM certificate", file)
	}
	return data, certs, nil
}

// readKey reads the private key formats istiod accepts in ca-key.pem:
// PKCS#8, SEC 1 EC and PKCS#1 RSA. An "EC PARAMETERS" block, which
// `openssl ecparam -genkey` writes before the key, is skipped.
func readKey(file string) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	rest := data
	for i := 0; ; i++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("certs: %s: no PEM private key", file)
		}
		var k any
		switch b.Type {
		case "EC PARAMETERS":
			continue
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			return nil, fmt.Errorf("certs: %s: PEM block %d: type %q is not a private key", file, i, b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("certs: %s: PEM block %d: %w", file, i, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("certs: %s: PEM block %d: key type %T cannot sign", file, i, k)
		}
		return s, nil
	}
}
