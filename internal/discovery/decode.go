package discovery

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1alpha2 "sigs.k8s.io/gateway-api/apis/v1alpha2"
	gatewayv1alpha3 "sigs.k8s.io/gateway-api/apis/v1alpha3"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
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

// newScheme registers groups; registration is static and cannot fail at run
// time.
func newScheme(adds ...func(*runtime.Scheme) error) *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range adds {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// scheme decodes the group versions peerd reads objects from.
var scheme = newScheme(corev1.AddToScheme, discoveryv1.AddToScheme, gatewayv1.Install, gatewayv1beta1.Install)

// knownKinds are the kinds of every group built into Kubernetes (as client-go
// of the same release knows them) and of the Gateway API, with the versions
// each kind is known at. A kind listed here that peerd does not store is
// skipped quietly; a kind missing here in a group listed here is a typo when
// it is close to one listed (see notStored).
var knownKinds = func() map[schema.GroupKind][]string {
	s := newScheme(clientgoscheme.AddToScheme, gatewayv1.Install, gatewayv1beta1.Install,
		gatewayv1alpha2.Install, gatewayv1alpha3.Install, gatewayxv1alpha1.Install)
	out := map[schema.GroupKind][]string{}
	for gvk := range s.AllKnownTypes() {
		if gvk.Version == runtime.APIVersionInternal {
			continue
		}
		out[gvk.GroupKind()] = append(out[gvk.GroupKind()], gvk.Version)
	}
	// Served by kube-apiserver itself, but their Go types live in modules
	// peerd does not need (apiextensions-apiserver, kube-aggregator).
	out[schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}] = []string{"v1"}
	out[schema.GroupKind{Group: "apiregistration.k8s.io", Kind: "APIService"}] = []string{"v1"}
	for _, versions := range out {
		slices.Sort(versions)
	}
	return out
}()

// knownGroups are the groups of knownKinds.
var knownGroups = func() map[string]bool {
	out := map[string]bool{}
	for gk := range knownKinds {
		out[gk.Group] = true
	}
	return out
}()

// codec decodes JSON strictly: unknown and duplicate fields are errors, as
// with `kubectl apply` (server-side field validation Strict).
var codec = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Strict: true})

// storedKinds are the kinds the Index stores, with every version of each
// that the API server peerd stands in for serves (Kubernetes 1.37, Gateway
// API v1.6 CRDs), the stored one first. EndpointSlice v1beta1 was removed in
// Kubernetes 1.25; the Gateway CRD serves v1beta1 beside v1 with the same
// schema and no conversion webhook, so a v1beta1 Gateway is read as v1.
var storedKinds = map[schema.GroupKind][]string{
	{Kind: "Namespace"}: {"v1"},
	{Kind: "Node"}:      {"v1"},
	{Kind: "Pod"}:       {"v1"},
	{Kind: "Service"}:   {"v1"},
	{Group: discoveryv1.GroupName, Kind: "EndpointSlice"}: {"v1"},
	{Group: gatewayv1.GroupName, Kind: "Gateway"}:         {"v1", "v1beta1"},
}

// Skipped is a document (or a List item) DecodeManifests left out: see the
// package documentation for which kinds are skipped and which are errors.
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
// peerd does not use (see the package documentation for the rule). Lists
// (`kind: List`, `kind: ServiceList`, ...) contribute their items, as kubectl
// reads them: an item with neither apiVersion nor kind takes the list's
// apiVersion and the list's kind without its List suffix.
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
	if h.isList() {
		items, err := d.listItems(h, js)
		if err != nil {
			return nil, err
		}
		var (
			objs []runtime.Object
			errs []error
		)
		for i, item := range items {
			ih, err := readHeader(item)
			if err != nil {
				errs = append(errs, d.fail(i, "", "", err))
				continue
			}
			if ih.hasItems {
				// kubectl cannot read a list inside a list either.
				errs = append(errs, d.fail(i, ih.objectName(), "items", fmt.Errorf("%w: a list inside a list", ErrInvalid)))
				continue
			}
			if ih.apiVersion == "" && ih.kind == "" {
				ih.apiVersion, ih.kind = h.apiVersion, strings.TrimSuffix(h.kind, "List")
				if item, err = withTypeMeta(item, ih); err != nil {
					errs = append(errs, d.fail(i, "", "", err))
					continue
				}
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
	// hasItems: the document has an `items` field, which makes it a list
	// for kubectl whatever its kind.
	hasItems bool
}

// readHeader reads what names an object without trusting the rest of it, so
// that errors about the rest can name the object.
func readHeader(js []byte) (header, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil || m == nil { // nil: a null list item
		return header{}, errors.New("not a Kubernetes object: a document must be a YAML mapping with apiVersion and kind")
	}
	str := func(raw json.RawMessage) string {
		var s string
		_ = json.Unmarshal(raw, &s)
		return s
	}
	_, hasItems := m["items"]
	h := header{apiVersion: str(m["apiVersion"]), kind: str(m["kind"]), hasItems: hasItems}
	var md map[string]json.RawMessage
	if json.Unmarshal(m["metadata"], &md) == nil {
		h.name, h.namespace, h.generateName = str(md["name"]), str(md["namespace"]), str(md["generateName"])
	}
	return h, nil
}

// isList reports whether the document is a list to read items from: a
// `List` or `<Kind>List` with items. (kubectl takes any document with items
// as a list; a document whose kind does not say so is left to the kind
// rules, where a stray items field is an error.)
func (h header) isList() bool {
	return h.hasItems && strings.HasSuffix(h.kind, "List")
}

// listItems returns a list document's items, refusing fields a list does not
// have (strict, as for every other kind).
func (d docDecoder) listItems(h header, js []byte) ([]json.RawMessage, error) {
	name := h.objectName()
	if h.apiVersion == "" {
		return nil, d.fail(-1, name, "apiVersion", ErrRequired)
	}
	var list map[string]json.RawMessage
	if err := json.Unmarshal(js, &list); err != nil {
		return nil, d.fail(-1, name, "", fmt.Errorf("%w: %w", ErrInvalid, err))
	}
	for _, field := range slices.Sorted(maps.Keys(list)) {
		switch field {
		case "apiVersion", "kind", "metadata", "items":
		default:
			return nil, d.fail(-1, name, field, fmt.Errorf("%w: unknown field", ErrInvalid))
		}
	}
	var items []json.RawMessage
	if err := json.Unmarshal(list["items"], &items); err != nil {
		return nil, d.fail(-1, name, "items", fmt.Errorf("%w: want a list of objects", ErrInvalid))
	}
	return items, nil
}

// withTypeMeta returns item with apiVersion and kind set from h.
func withTypeMeta(item json.RawMessage, h header) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(item, &m); err != nil || m == nil {
		return nil, errors.New("not a Kubernetes object: a list item must be a mapping")
	}
	m["apiVersion"], _ = json.Marshal(h.apiVersion)
	m["kind"], _ = json.Marshal(h.kind)
	return json.Marshal(m)
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
	served, stored := storedKinds[gvk.GroupKind()]
	if !stored {
		return nil, d.notStored(item, name, h, gvk)
	}
	if !slices.Contains(served, gv.Version) {
		return nil, d.fail(item, name, "apiVersion", fmt.Errorf("%w %q: %s is served as %s", ErrInvalid, h.apiVersion, h.kind,
			versionList(gvk.GroupKind(), served)))
	}
	obj, _, err := codec.Decode(js, nil, nil)
	if err != nil {
		return nil, d.decodeError(item, name, js, err)
	}
	if b, ok := obj.(*gatewayv1beta1.Gateway); ok {
		// Same schema, no conversion webhook: the API server only changes
		// the apiVersion.
		gw := gatewayv1.Gateway(*b)
		gw.APIVersion = gatewayv1.GroupVersion.String()
		obj = &gw
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

// notStored decides about a kind the Index does not store: nil (skipped,
// and told to d.skip) or an error when the kind looks like a typo.
func (d docDecoder) notStored(item int, name string, h header, gvk schema.GroupVersionKind) error {
	skip := func(warn bool, reason string) error {
		if d.skip != nil {
			d.skip(Skipped{File: d.file, Document: d.doc, Item: item, GVK: gvk, Name: h.name, Warn: warn, Reason: reason})
		}
		return nil
	}
	gk := gvk.GroupKind()
	if versions, ok := knownKinds[gk]; ok {
		if !slices.Contains(versions, gvk.Version) {
			return skip(true, fmt.Sprintf("a kind peerd does not read, at a version no API server serves (known: %s)", strings.Join(versions, ", ")))
		}
		return skip(false, "a kind peerd does not read")
	}
	if knownGroups[gk.Group] {
		// Close to a kind peerd knows: a typo, which must not make the
		// object vanish. Far from every known kind: more likely a kind
		// newer than peerd than a typo, so only a warning.
		if s := suggestKind(gk); s != "" {
			return d.fail(item, name, "kind", fmt.Errorf("%w %q: not a kind of %s (did you mean %s?)", ErrInvalid, h.kind, groupName(gk.Group), s))
		}
		return skip(true, "not a kind of "+groupName(gk.Group)+" that peerd knows")
	}
	if g := nearestGroup(gk.Group); g != "" {
		return d.fail(item, name, "apiVersion", fmt.Errorf("%w %q: unknown API group %q (did you mean %q?)", ErrInvalid, h.apiVersion, gk.Group, g))
	}
	return skip(true, "a kind peerd does not know (a custom resource?)")
}

func groupName(group string) string {
	if group == "" {
		return "the core API group (apiVersion: v1)"
	}
	return "API group " + group
}

// versionList renders the apiVersions a kind is served at.
func versionList(gk schema.GroupKind, versions []string) string {
	out := make([]string, len(versions))
	for i, v := range versions {
		out[i] = schema.GroupVersion{Group: gk.Group, Version: v}.String()
	}
	return strings.Join(out, " or ")
}

// suggestKind names the known kind closest to gk.Kind: the same name in
// another group, or a name at most two edits away in the same group; "" when
// nothing is close. Ties go to the kinds peerd stores, then by name, so the
// hint is stable.
func suggestKind(gk schema.GroupKind) string {
	type candidate struct {
		dist   int
		other  bool // not a kind peerd stores
		render string
	}
	var best *candidate
	for known, versions := range knownKinds {
		if strings.HasSuffix(known.Kind, "List") || strings.HasSuffix(known.Kind, "Options") {
			continue
		}
		c := candidate{render: known.Kind}
		switch {
		case known.Group == gk.Group:
			c.dist = editDistance(strings.ToLower(known.Kind), strings.ToLower(gk.Kind))
		case strings.EqualFold(known.Kind, gk.Kind):
			if served, ok := storedKinds[known]; ok {
				versions = served
			}
			c.render = fmt.Sprintf("%s in apiVersion %s", known.Kind, schema.GroupVersion{Group: known.Group, Version: versions[0]})
		default:
			continue
		}
		_, stored := storedKinds[known]
		c.other = !stored
		if c.dist > 2 {
			continue
		}
		if best == nil || cmp.Or(cmp.Compare(c.dist, best.dist), compareBool(c.other, best.other), cmp.Compare(c.render, best.render)) < 0 {
			best = &c
		}
	}
	if best == nil {
		return ""
	}
	return best.render
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// nearestGroup returns the known group one edit away from group, if any: a
// typo, not a custom resource's group.
func nearestGroup(group string) string {
	var best string
	for g := range knownGroups {
		if editDistance(g, group) == 1 && (best == "" || g < best) {
			best = g
		}
	}
	return best
}

// editDistance counts the edits between a and b (bytes): insertions,
// deletions, substitutions and swaps of two neighbours, the usual typos
// (optimal string alignment distance).
func editDistance(a, b string) int {
	rows := [3][]int{make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)}
	for j := range rows[1] {
		rows[1][j] = j
	}
	for i := 1; i <= len(a); i++ {
		prev2, prev, cur := rows[0], rows[1], rows[2]
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		rows = [3][]int{prev, cur, prev2}
	}
	return rows[1][len(b)]
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
