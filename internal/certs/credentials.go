package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// CredentialsOptions configures peerd's own TLS identity.
type CredentialsOptions struct {
	// Identity is peerd's SPIFFE ID: the system namespace and peerd's
	// service account in its trust domain.
	Identity Identity
	// SANs are the DNS names and IP addresses of the TLS listener, which
	// ztunnel checks against the address it dials (peers check Identity).
	SANs []string
	// TTL is the leaf's lifetime; zero means DefaultLeafTTL.
	TTL time.Duration
	// Logger receives refused client certificates; nil logs nothing.
	Logger *zap.Logger
	// Registerer receives the rejection counter; nil registers none.
	Registerer prometheus.Registerer
}

// Credentials is peerd's TLS identity under an Authority: one leaf, minted
// from the CA in force and rotated (see rotator), presented on both ends of
// peer links and to ztunnel, and the verification of the other end against
// the roots in force. Every *tls.Config it returns reads the Authority at
// handshake time: after a CA reload the next handshake uses the new leaf
// and roots, and established connections are left alone. Safe for
// concurrent use.
type Credentials struct {
	a        *Authority
	id       Identity
	leaf     *rotator
	log      *zap.Logger
	rejected *prometheus.CounterVec
	// server is the server config derived from one authorityState; it is
	// rebuilt when the Authority moves on.
	server atomic.Pointer[serverConfig]
}

type serverConfig struct {
	state *authorityState
	cfg   *tls.Config
}

// Reasons a certificate is refused: the values of the reason label of
// peerd_tls_rejections_total and of RejectionError.Reason.
const (
	ReasonNoCertificate      = "no_certificate"
	ReasonUnknownAuthority   = "unknown_authority"
	ReasonExpired            = "expired"
	ReasonKeyUsage           = "key_usage"
	ReasonInvalidCertificate = "invalid_certificate"
	ReasonNoSPIFFEID         = "no_spiffe_id"
	ReasonTrustDomain        = "trust_domain"
	// ReasonNotPeerd: a certificate under the root, but a workload's, not a
	// peerd's (another namespace or service account).
	ReasonNotPeerd = "not_peerd_identity"
	// ReasonRemoteRejected: the other end refused our certificate (a TLS
	// alert); its own log says why.
	ReasonRemoteRejected = "remote_rejected_ours"
)

// NewCredentials mints the first leaf now, so that a bad identity or SAN
// fails at start-up rather than at the first handshake.
func NewCredentials(a *Authority, opts CredentialsOptions) (*Credentials, error) {
	if err := opts.Identity.Validate(); err != nil {
		return nil, fmt.Errorf("certs: peerd identity: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	id, sans, ttl := opts.Identity, append([]string(nil), opts.SANs...), opts.TTL
	c := &Credentials{
		a:   a,
		id:  id,
		log: log,
		leaf: &rotator{
			ca:   a.CA,
			now:  a.now,
			mint: func(ca *CA) (tls.Certificate, error) { return ca.IdentityCertificate(id, sans, ttl) },
		},
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_tls_rejections_total",
			Help: "TLS handshakes refused over a certificate, by side (server: a client's certificate on --listen; client: a peer's server certificate on a link) and reason.",
		}, []string{"side", "reason"}),
	}
	if _, err := c.leaf.get(); err != nil {
		return nil, err
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(c.rejected)
	}
	return c, nil
}

// Identity is peerd's own SPIFFE ID.
func (c *Credentials) Identity() Identity { return c.id }

// Certificate is the leaf in force, minting a new one when it is due.
func (c *Credentials) Certificate() (*tls.Certificate, error) { return c.leaf.get() }

// ServerTLSConfig is the config of the TLS listener that ztunnel and peers
// share. ztunnel presents no client certificate and is let in (it is
// authorised per type by its token, later); a client that presents one
// must chain to a root in force, with ClientAuth usage, or the handshake
// fails, so PeerIdentity only ever sees verified chains. For gRPC use
// ServerCredentials, which also logs and counts those refusals.
//
// The config is re-derived per handshake (GetConfigForClient) from the
// CA in force. The derived config offers ALPN "h2" itself, since gRPC's
// own addition to the outer config does not reach it; session tickets are
// off so that every connection is verified against the roots in force
// (xDS connections are long-lived: resumption would save nothing).
func (c *Credentials) ServerTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return c.serverConfigFor(c.a.cur.Load()), nil
		},
	}
}

func (c *Credentials) serverConfigFor(st *authorityState) *tls.Config {
	if s := c.server.Load(); s != nil && s.state == st {
		return s.cfg
	}
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS12,
		NextProtos:             []string{"h2"},
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.leaf.get() },
		ClientAuth:             tls.VerifyClientCertIfGiven,
		ClientCAs:              st.roots,
		SessionTicketsDisabled: true,
		Time:                   c.a.now,
	}
	c.server.Store(&serverConfig{state: st, cfg: cfg})
	return cfg
}

// ServerCredentials are gRPC server credentials over ServerTLSConfig that
// log and count every handshake refused over a certificate: a client's
// that does not verify, or ours refused by the client.
func (c *Credentials) ServerCredentials() credentials.TransportCredentials {
	return serverCreds{TransportCredentials: credentials.NewTLS(c.ServerTLSConfig()), c: c}
}

type serverCreds struct {
	credentials.TransportCredentials
	c *Credentials
}

func (s serverCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	remote := conn.RemoteAddr()
	out, info, err := s.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		s.c.serverHandshakeFailed(remote, err)
	}
	return out, info, err
}

func (s serverCreds) Clone() credentials.TransportCredentials {
	return serverCreds{TransportCredentials: s.TransportCredentials.Clone(), c: s.c}
}

// serverHandshakeFailed logs and counts a refused certificate. Other
// handshake failures (a port scan, a client that hung up) are no peer's
// certificate problem and are left to gRPC's own logging.
func (c *Credentials) serverHandshakeFailed(remote net.Addr, err error) {
	var cve *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case errors.As(err, &cve):
		reason := verifyReason(cve.Err)
		c.rejected.WithLabelValues("server", reason).Inc()
		fields := []zap.Field{zap.Stringer("remote", remote), zap.String("reason", reason), zap.Error(cve.Err)}
		if len(cve.UnverifiedCertificates) > 0 {
			fields = append(fields, zap.String("presented", describe(cve.UnverifiedCertificates[0])))
		}
		c.log.Warn("refused a client certificate on the TLS listener", fields...)
	case errors.As(err, &op) && op.Op == "remote error":
		c.rejected.WithLabelValues("server", ReasonRemoteRejected).Inc()
		c.log.Warn("a client refused peerd's certificate (see that client's log for why)",
			zap.Stringer("remote", remote), zap.Error(err), zap.String("ours", c.id.String()))
	}
}

// PeerClientTLS is the config of a peer link's connection. It presents
// peerd's leaf and accepts the server only when its chain verifies against
// the roots in force (ServerAuth usage, valid now) and its SPIFFE ID names
// expectedTrustDomain (any trust domain when skipTrustDomain is set, as
// Istio's SKIP_VALIDATE_TRUST_DOMAIN does; a SPIFFE ID is still required).
//
// The host name is not checked: the link dials the remote east-west
// gateway, which passes TLS through to the peer, so the dialled name is the
// gateway's, not the peer's. Go's verification is therefore switched off
// (InsecureSkipVerify) and replaced entirely by VerifyConnection. Its
// errors are *RejectionError, counted here; a caller that wants them per
// link wraps VerifyConnection (gRPC reports only their text).
func (c *Credentials) PeerClientTLS(expectedTrustDomain string, skipTrustDomain bool) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.leaf.get() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := c.verifyPeer(cs.PeerCertificates, expectedTrustDomain, skipTrustDomain)
			if err != nil {
				c.rejected.WithLabelValues("client", err.Reason).Inc()
				return err
			}
			return nil
		},
	}
}

// RejectionError is a peer's certificate refused by a link.
type RejectionError struct {
	// Reason is one of the Reason constants.
	Reason string
	// Presented is the SPIFFE ID or subject of the peer's certificate,
	// empty when it sent none.
	Presented string
	msg       string
	err       error
}

func (e *RejectionError) Error() string { return "peer certificate: " + e.msg }
func (e *RejectionError) Unwrap() error { return e.err }

func (c *Credentials) verifyPeer(certs []*x509.Certificate, expectedTrustDomain string, skipTrustDomain bool) *RejectionError {
	if len(certs) == 0 {
		return &RejectionError{Reason: ReasonNoCertificate, msg: "none presented"}
	}
	leaf := certs[0]
	presented := describe(leaf)
	inter := x509.NewCertPool()
	for _, cert := range certs[1:] {
		inter.AddCert(cert)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         c.a.Roots(),
		Intermediates: inter,
		CurrentTime:   c.a.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return &RejectionError{Reason: verifyReason(err), Presented: presented, err: err,
			msg: fmt.Sprintf("%s: not trusted by the roots in force: %v", presented, err)}
	}
	id, err := CertificateIdentity(leaf)
	if err != nil {
		return &RejectionError{Reason: ReasonNoSPIFFEID, Presented: presented, err: err,
			msg: fmt.Sprintf("%s: %v", presented, err)}
	}
	// Every cluster's workloads hold certificates under the same root, many
	// with the server usage: only peerd's own identity (the same namespace
	// and service account as ours) may speak for a linked cluster.
	if id.Namespace != c.id.Namespace || id.ServiceAccount != c.id.ServiceAccount {
		return &RejectionError{Reason: ReasonNotPeerd, Presented: presented,
			msg: fmt.Sprintf("%s is not a peerd identity (namespace %s, service account %s)", id, c.id.Namespace, c.id.ServiceAccount)}
	}
	if skipTrustDomain || id.TrustDomain == expectedTrustDomain {
		return nil
	}
	expected := expectedTrustDomain
	if expected == "" {
		expected = "none"
	}
	return &RejectionError{Reason: ReasonTrustDomain, Presented: presented,
		msg: fmt.Sprintf("trust domain %s, link expects %s (%s)", id.TrustDomain, expected, id)}
}

// verifyReason sorts an x509 verification error into a Reason.
func verifyReason(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return ReasonUnknownAuthority
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return ReasonExpired
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return ReasonKeyUsage
	default:
		return ReasonInvalidCertificate
	}
}

// describe names a certificate for a log line or an error: its SPIFFE ID
// when it has one, else its subject.
func describe(cert *x509.Certificate) string {
	if id, err := CertificateIdentity(cert); err == nil {
		return id.String()
	}
	return truncate(cert.Subject.String(), 256)
}
