package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// ManifestError is one problem in one document of a manifest file. Its text
// names the file, the document, the object when known and the field when
// known: `apps.yaml: document 2: service apps/echo: spec.clusterIP: ...`.
type ManifestError struct {
	File string
	// Document is the 1-based position of the YAML document in the file, as
	// an editor counts them (empty documents count too).
	Document int
	// Item is the 0-based index in a `kind: List` document's items, or -1.
	Item int
	// Object names the object ("service apps/echo") when it is known.
	Object string
	// Field is the field path ("spec.ports[1].targetPort") when known.
	Field string
	Err   error
}

func (e *ManifestError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: document %d", e.File, e.Document)
	if e.Item >= 0 {
		fmt.Fprintf(&b, ": items[%d]", e.Item)
	}
	if e.Object != "" {
		b.WriteString(": " + e.Object)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Err.Error())
	return b.String()
}

func (e *ManifestError) Unwrap() error { return e.Err }

// ErrRequired and ErrInvalid are wrapped by field errors so callers can tell
// a missing field from a bad value.
var (
	ErrRequired = errors.New("required")
	ErrInvalid  = errors.New("invalid value")
)

// scheme knows the groups peerd reads. Registering whole groups (not only the
// kinds peerd stores) lets the codec recognise, say, a ConfigMap, which is
// then skipped as a kind peerd does not use.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme, gatewayv1.Install} {
		if err := add(s); err != nil {
			panic(err) // static registration; cannot fail at run time
		}
	}
	return s
}()

// codec decodes JSON strictly: unknown and duplicate fields are errors, as
// with `kubectl apply` (server-side field validation Strict).
var codec = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Strict: true})

// storedKinds are the kinds the Index stores, at the only version peerd reads.
var storedKinds = map[schema.GroupKind]schema.GroupVersionKind{
	{Kind: "Namespace"}: corev1.SchemeGroupVersion.WithKind("Namespace"),
	{Kind: "Node"}:      corev1.SchemeGroupVersion.WithKind("Node"),
	{Kind: "Pod"}:       corev1.SchemeGroupVersion.WithKind("Pod"),
	{Kind: "Service"}:   corev1.SchemeGroupVersion.WithKind("Service"),
	{Group: discoveryv1.GroupName, Kind: "EndpointSlice"}: discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"),
	{Group: gatewayv1.GroupName, Kind: "Gateway"}:         schema.GroupVersion{Group: gatewayv1.GroupName, Version: "v1"}.WithKind("Gateway"),
}

// Skipped is a document (or a List item) DecodeManifests left out.
type Skipped struct {
	File     string
	Document int
	// Item is the 0-based index in a List document's items, or -1.
	Item int
	GVK  schema.GroupVersionKind
	Name string
	// Warn is set when peerd does not know the kind or the version at all,
	// so an operator should look; unset for a kind peerd knows and has no
	// use for.
	Warn   bool
	Reason string
}

// SkipFunc is told about each document DecodeManifests leaves out.
type SkipFunc func(Skipped)

// DecodeManifests decodes a multi-document YAML file into typed objects of
// the kinds the Index stores, with the API server's defaults applied (see
// defaults.go). Empty documents are skipped, and so are documents of kinds
// peerd does not use. `kind: List` documents contribute their items.
//
// Any bad document makes the whole result an error (errors.Join of
// *ManifestError, one per problem found) and no objects are returned: a file
// is taken as a whole or not at all.
func DecodeManifests(file string, data []byte) ([]runtime.Object, error) {
	return decodeManifests(file, data, nil)
}

func decodeManifests(file string, data []byte, skip SkipFunc) ([]runtime.Object, error) {
	var (
		objs []runtime.Object
		errs []error
		seen = map[Key]int{} // object -> document that defined it first
	)
	for i, raw := range splitDocuments(data) {
		doc := i + 1
		d := docDecoder{file: file, doc: doc, skip: skip}
		got, err := d.decodeDocument(raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, obj := range got {
			key, _ := KeyOf(obj) // prepare guarantees a name
			if first, ok := seen[key]; ok {
				errs = append(errs, d.fail(-1, key.String(), "", fmt.Errorf("%w: also in document %d of this file", ErrConflict, first)))
				continue
			}
			seen[key] = doc
			objs = append(objs, obj)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return objs, nil
}

// splitDocuments cuts a multi-document YAML file at its `---` lines. Unlike
// apimachinery's YAMLReader it keeps empty documents, so that document
// numbers in errors match what a reader counts in the file. Only a leading
// chunk of blank lines and comments before the first `---` is not a
// document.
func splitDocuments(data []byte) [][]byte {
	var (
		docs [][]byte
		cur  []byte
		// sawContent: cur holds something other than blanks and comments;
		// sawSep: a separator was seen.
		sawContent, sawSep bool
	)
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		if isSeparator(line) {
			if sawSep || sawContent {
				docs = append(docs, cur)
			}
			cur, sawContent, sawSep = nil, false, true
			continue
		}
		cur = append(cur, line...)
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			sawContent = true
		}
	}
	if sawContent || (sawSep && len(bytes.TrimSpace(cur)) > 0) {
		docs = append(docs, cur)
	}
	return docs
}

// isSeparator reports whether line is a document separator: `---` at the
// start, followed by nothing but blanks or a comment.
func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("---"))
	if !ok {
		return false
	}
	if len(rest) > 0 && rest[0] != ' ' && rest[0] != '\t' && rest[0] != '\n' && rest[0] != '\r' {
		return false
	}
	rest = bytes.TrimSpace(rest)
	return len(rest) == 0 || rest[0] == '#'
}

type docDecoder struct {
	file string
	doc  int
	skip SkipFunc
}

func (d docDecoder) fail(item int, object, field string, err error) error {
	return &ManifestError{File: d.file, Document: d.doc, Item: item, Object: object, Field: field, Err: err}
}

func (d docDecoder) decodeDocument(raw []byte) ([]runtime.Object, error) {
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return nil, d.fail(-1, "", "", fmt.Errorf("malformed YAML: %w", err))
	}
	js = bytes.TrimSpace(js)
	if len(js) == 0 || string(js) == "null" {
		return nil, nil // empty document or comments only
	}
	h, err := readHeader(js)
	if err != nil {
		return nil, d.fail(-1, "", "", err)
	}
	if h.kind == "List" && (h.apiVersion == "v1" || h.apiVersion == "") {
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(js, &list); err != nil {
			return nil, d.fail(-1, "", "items", fmt.Errorf("%w: %w", ErrInvalid, err))
		}
		var (
			objs []runtime.Object
			errs []error
		)
		for i, item := range list.Items {
			ih, err := readHeader(item)
			if err != nil {
				errs = append(errs, d.fail(i, "", "", err))
				continue
			}
			obj, err := d.decodeObject(i, ih, item)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if obj != nil {
				objs = append(objs, obj)
			}
		}
		return objs, errors.Join(errs...)
	}
	obj, err := d.decodeObject(-1, h, js)
	if err != nil || obj == nil {
		return nil, err
	}
	return []runtime.Object{obj}, nil
}

type header struct {
	apiVersion, kind, namespace, name, generateName string
}

// readHeader reads what names an object without trusting the rest of it, so
// that errors about the rest can name the object.
func readHeader(js []byte) (header, error) {
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return header{}, errors.New("not a Kubernetes object: a document must be a YAML mapping with apiVersion and kind")
	}
	str := func(v any) string { s, _ := v.(string); return s }
	h := header{apiVersion: str(m["apiVersion"]), kind: str(m["kind"])}
	if md, ok := m["metadata"].(map[string]any); ok {
		h.name, h.namespace, h.generateName = str(md["name"]), str(md["namespace"]), str(md["generateName"])
	}
	return h, nil
}

// objectName renders the object for errors before it is decoded.
func (h header) objectName() string {
	if h.kind == "" {
		return ""
	}
	kind := strings.ToLower(h.kind)
	switch {
	case h.name == "":
		return kind
	case h.namespace == "" || h.kind == "Namespace" || h.kind == "Node":
		return kind + " " + h.name
	default:
		return kind + " " + h.namespace + "/" + h.name
	}
}

// decodeObject decodes one object; nil, nil means a kind peerd does not use.
func (d docDecoder) decodeObject(item int, h header, js []byte) (runtime.Object, error) {
	name := h.objectName()
	if h.apiVersion == "" {
		return nil, d.fail(item, name, "apiVersion", ErrRequired)
	}
	if h.kind == "" {
		return nil, d.fail(item, name, "kind", ErrRequired)
	}
	gv, err := schema.ParseGroupVersion(h.apiVersion)
	if err != nil {
		return nil, d.fail(item, name, "apiVersion", fmt.Errorf("%w: %w", ErrInvalid, err))
	}
	gvk := gv.WithKind(h.kind)
	want, stored := storedKinds[gvk.GroupKind()]
	if !stored {
		if d.skip != nil {
			d.skip(Skipped{File: d.file, Document: d.doc, Item: item, GVK: gvk, Name: h.name, Reason: "a kind peerd does not read"})
		}
		return nil, nil
	}
	if gvk != want {
		return nil, d.fail(item, name, "apiVersion", fmt.Errorf("%w: %q: peerd reads %s only", ErrInvalid, h.apiVersion, want.GroupVersion()))
	}
	obj, _, err := codec.Decode(js, nil, nil)
	if err != nil {
		return nil, d.decodeError(item, name, js, err)
	}
	// The object is ours from here: set namespace and defaults, then check.
	if errs := prepare(obj); len(errs) > 0 {
		key, _ := KeyOf(obj)
		if key.Name != "" {
			name = key.String()
		}
		out := make([]error, 0, len(errs))
		for _, fe := range errs {
			out = append(out, d.fail(item, name, fe.field, fe.err))
		}
		return nil, errors.Join(out...)
	}
	return obj, nil
}

var (
	strictFieldRE = regexp.MustCompile(`^(unknown|duplicate) field "(.*)"$`)
	typeErrorRE   = regexp.MustCompile(`^json: cannot unmarshal (.+) into Go struct field [^.\s]+\.(\S+) of type (\S+)$`)
)

// decodeError turns the codec's error into ManifestErrors that name the
// field. Strict-mode errors carry the full path with indexes; type errors
// carry a path without indexes, which findField resolves against the
// document.
func (d docDecoder) decodeError(item int, name string, js []byte, err error) error {
	if se, ok := runtime.AsStrictDecodingError(err); ok {
		var out []error
		for _, e := range se.Errors() {
			if m := strictFieldRE.FindStringSubmatch(e.Error()); m != nil {
				out = append(out, d.fail(item, name, m[2], fmt.Errorf("%w: %s field", ErrInvalid, m[1])))
			} else {
				out = append(out, d.fail(item, name, "", e))
			}
		}
		return errors.Join(out...)
	}
	if m := typeErrorRE.FindStringSubmatch(err.Error()); m != nil {
		got, path, want := m[1], m[2], m[3]
		return d.fail(item, name, findField(js, path, got), fmt.Errorf("%w: got %s, want %s", ErrInvalid, got, want))
	}
	return d.fail(item, name, "", fmt.Errorf("%w: %w", ErrInvalid, err))
}

// findField resolves a dotted path without list indexes ("spec.ports.port")
// to the first concrete path in the document whose value is of the JSON kind
// the decoder complained about ("spec.ports[1].port"). When nothing matches
// it returns the path as given.
func findField(js []byte, path, got string) string {
	var doc any
	if json.Unmarshal(js, &doc) != nil {
		return path
	}
	want := strings.Fields(got)[0] // "string", "number", "object", "array", "bool"
	var walk func(v any, segs []string, at string) string
	walk = func(v any, segs []string, at string) string {
		if list, ok := v.([]any); ok {
			for i, e := range list {
				if p := walk(e, segs, at+"["+strconv.Itoa(i)+"]"); p != "" {
					return p
				}
			}
			if len(segs) == 0 && want == "array" {
				return at
			}
			return ""
		}
		if len(segs) == 0 {
			if jsonKind(v) == want {
				return at
			}
			return ""
		}
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		child, ok := m[segs[0]]
		if !ok {
			return ""
		}
		next := segs[0]
		if at != "" {
			next = at + "." + segs[0]
		}
		return walk(child, segs[1:], next)
	}
	if p := walk(doc, strings.Split(path, "."), ""); p != "" {
		return p
	}
	return path
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	}
	return ""
}
