package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/metadata"

	"github.com/peerd-mesh/peerd/internal/view"
)

// serverFlags say how a command reaches a running peerd and takes what a
// ztunnel would receive from it. `peerd view` and `peerd explain` share them.
type serverFlags struct {
	addr      string
	dial      view.DialOptions
	timeout   time.Duration
	token     string
	tokenFile string
}

func (f *serverFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.addr, "addr", "", "peerd's gRPC address, HOST:PORT (its --plaintext-listen, or --listen with --tls)")
	fs.BoolVar(&f.dial.TLS, "tls", false, "use TLS, verifying peerd against --root-cert only")
	fs.StringVar(&f.dial.RootCert, "root-cert", "", "PEM file of the mesh root to trust with --tls")
	fs.StringVar(&f.dial.ServerName, "server-name", "", "name expected in peerd's certificate with --tls (default: the host of --addr), e.g. peerd.istio-system.svc")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up when the full view has not arrived by then")
	fs.StringVar(&f.token, "token", "", "service-account token sent as \"authorization: Bearer <token>\", as ztunnel sends it (peerd's --listen in Kubernetes mode requires one valid for its --token-audience, e.g. from: kubectl create token ztunnel -n istio-system --audience istio-ca)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the token for --token (e.g. a projected service-account token)")
}

// bearer returns the token of --token or --token-file ("" for none).
func (f *serverFlags) bearer() (string, error) {
	switch {
	case f.token != "" && f.tokenFile != "":
		return "", errors.New("--token and --token-file: give one")
	case f.tokenFile != "":
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		token := strings.TrimSpace(string(b))
		if token == "" {
			return "", fmt.Errorf("--token-file %s: empty", f.tokenFile)
		}
		return token, nil
	default:
		return f.token, nil
	}
}

// snapshot fetches the given types (nil: all) as a wildcard ztunnel would.
func (f *serverFlags) snapshot(ctx context.Context, types []string) (view.Snapshot, error) {
	if !f.dial.TLS && (f.dial.RootCert != "" || f.dial.ServerName != "") {
		return view.Snapshot{}, errors.New("--root-cert and --server-name apply only with --tls")
	}
	if f.dial.TLS && f.dial.RootCert == "" {
		return view.Snapshot{}, errors.New("--tls needs --root-cert (the mesh root, e.g. root-cert.pem from `peerd certs`)")
	}
	token, err := f.bearer()
	if err != nil {
		return view.Snapshot{}, err
	}
	d := f.dial
	if d.TLS && d.ServerName == "" {
		// As any TLS client: expect the host we dial in the certificate.
		if host, _, err := net.SplitHostPort(f.addr); err == nil {
			d.ServerName = host
		}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	cc, err := view.Dial(f.addr, d)
	if err != nil {
		return view.Snapshot{}, err
	}
	defer cc.Close()
	snap, err := view.Fetch(ctx, cc, view.FetchOptions{TypeURLs: types})
	if err != nil {
		if d.TLS && f.dial.ServerName == "" && strings.Contains(err.Error(), "x509") {
			return view.Snapshot{}, fmt.Errorf("--addr %s: %w (the certificate was checked for %q, the host of --addr; pass --server-name, e.g. peerd.istio-system.svc)", f.addr, err, d.ServerName)
		}
		return view.Snapshot{}, fmt.Errorf("--addr %s: %w", f.addr, err)
	}
	return snap, nil
}
