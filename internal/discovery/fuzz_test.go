package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
)

// Fuzz targets for the decoders of input from outside the process: the
// manifest files of --config-dir. docs/fuzzing.md records the long runs.
//
//	go test -run '^$' -fuzz FuzzDecodeManifests -fuzztime 10m ./internal/discovery/

// addManifestSeeds seeds f with every manifest the repository ships: the
// examples and the Istio comparison's test data.
func addManifestSeeds(f *testing.F) {
	f.Helper()
	var files []string
	for _, pattern := range []string{"../../examples/*/*.yaml", "../../test/istio/testdata/*/*.yaml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		f.Fatal("no seed manifests found")
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	// Shapes the examples do not have: lists, versions, typos, junk.
	for _, s := range []string{
		"apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: a}\n  spec: {clusterIP: None}\n",
		"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n",
		"apiVersion: gateway.networking.k8s.io/v1beta1\nkind: Gateway\nmetadata: {name: g}\nspec: {gatewayClassName: c, listeners: [{name: l, port: 1, protocol: TCP}]}\n",
		"apiVersion: v1\nkind: Servce\nmetadata: {name: s}\n",
		"apiVersion: example.com/v1\nkind: Widget\n---\n--- # x\n\n",
		"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{port: 80}]\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: \"x\"}]}]}\n",
		"{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"n\"}}",
		"- a\n- b\n",
		"a: &x [*x]\n",
	} {
		f.Add([]byte(s))
	}
}

// FuzzDecodeManifests feeds arbitrary bytes to the manifest decoder (with
// the API server's defaults applied) and checks what it promises: no panic;
// either objects or an error, never both; every error names its file and
// document; every object has a key and appears once; and decoding is
// idempotent: an object written back as a manifest decodes to itself, so the
// defaults applied once are a fixed point.
func FuzzDecodeManifests(f *testing.F) {
	addManifestSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := DecodeManifests("fuzz.yaml", data)
		if err != nil {
			if objs != nil {
				t.Fatalf("objects returned with an error: %v", err)
			}
			checkManifestErrors(t, err)
			return
		}
		seen := map[Key]bool{}
		for _, obj := range objs {
			key, err := KeyOf(obj)
			if err != nil {
				t.Fatalf("decoded object without a key: %v", err)
			}
			if seen[key] {
				t.Fatalf("%s decoded twice", key)
			}
			seen[key] = true
			checkRoundTrip(t, key, obj)
		}
	})
}

// checkManifestErrors checks that every error DecodeManifests joined is a
// ManifestError naming the file and a document of it.
func checkManifestErrors(t *testing.T, err error) {
	t.Helper()
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var me *ManifestError
		if !errors.As(e, &me) {
			t.Fatalf("error %T is not a *ManifestError: %v", e, e)
		}
		if me.File != "fuzz.yaml" || me.Document < 1 || me.Err == nil {
			t.Fatalf("error names no file or document: %+v", me)
		}
		if !strings.HasPrefix(me.Error(), "fuzz.yaml: document ") {
			t.Fatalf("error text %q does not start with the file and document", me.Error())
		}
	}
}

// checkRoundTrip writes obj back as JSON (YAML's subset) with its apiVersion
// and kind and decodes it again.
func checkRoundTrip(t *testing.T, key Key, obj runtime.Object) {
	t.Helper()
	gvks, _, err := scheme.ObjectKinds(obj)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	obj = obj.DeepCopyObject()
	obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	js, err := json.Marshal(obj)
	if err != nil {
		t.Fatalf("%s: marshal: %v", key, err)
	}
	again, err := DecodeManifests("again.yaml", js)
	if err != nil {
		t.Fatalf("%s: decoding what it decoded to failed: %v\n%s", key, err, js)
	}
	if len(again) != 1 {
		t.Fatalf("%s: decoding what it decoded to gave %d objects", key, len(again))
	}
	again[0].GetObjectKind().SetGroupVersionKind(gvks[0])
	if !apiequality.Semantic.DeepEqual(obj, again[0]) {
		t.Fatalf("%s: defaults are not a fixed point:\nonce:  %s\ntwice: %s", key, js, mustJSON(again[0]))
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// FuzzSplitDocuments checks the document splitter loses nothing: every line
// of the input is either in exactly one document, a separator, or part of
// the blank-and-comment preamble before the first separator.
func FuzzSplitDocuments(f *testing.F) {
	addManifestSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		docs := splitDocuments(data)
		var rebuilt []byte
		for _, d := range docs {
			rebuilt = append(rebuilt, d...)
		}
		var kept []byte
		for line := range bytes.Lines(data) {
			if !isSeparator(line) {
				kept = append(kept, line...)
			}
		}
		// The documents, in order, are the remaining lines but for a
		// preamble and a tail of blanks and comments.
		for at := 0; ; {
			if bytes.HasPrefix(kept[at:], rebuilt) && onlyBlanksAndComments(kept[:at]) && onlyBlanksAndComments(kept[at+len(rebuilt):]) {
				return
			}
			next := bytes.IndexByte(kept[at:], '\n')
			if next < 0 {
				t.Fatalf("documents %q are not the input's lines %q", docs, kept)
			}
			at += next + 1
		}
	})
}

func onlyBlanksAndComments(b []byte) bool {
	for line := range bytes.Lines(b) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			return false
		}
	}
	return true
}
