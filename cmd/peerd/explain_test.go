package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestExplainFlags: mistakes in the command line are reported before any
// connection is attempted (the address below does not exist).
func TestExplainFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no client", []string{"--service", "apps/echo"}, "say where the client runs: --node NAME, or --network NET"},
		{"no service", []string{"--node", "node-a"}, `required flag(s) "service" not set`},
		{"bad output", []string{"--service", "apps/echo", "--node", "node-a", "-o", "yaml"}, `--output "yaml": want table or json`},
		{"root cert without TLS", []string{"--service", "apps/echo", "--node", "node-a", "--root-cert", "x.pem"}, "--root-cert and --server-name apply only with --tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newRootCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append([]string{"explain", "--addr", "127.0.0.1:1"}, tc.args...))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
