package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTokenFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("  eyJ.x.y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, token, file string
		want, wantErr     string
	}{
		{"none", "", "", "", ""},
		{"--token", "abc", "", "abc", ""},
		{"--token-file, trimmed", "", file, "eyJ.x.y", ""},
		{"both", "abc", file, "", "give one"},
		{"missing file", "", filepath.Join(dir, "nope"), "", "--token-file"},
		{"empty file", "", empty, "", "empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := serverFlags{token: tc.token, tokenFile: tc.file}
			got, err := f.bearer()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("bearer() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
