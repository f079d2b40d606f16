// Package kubeyaml writes Kubernetes objects as the YAML an operator
// applies (`kubectl apply -f -`): what `peerd expose --generate` and
// `peerd link --generate` print and what tests write into config dirs. It
// has no I/O of its own and depends on no client.
package kubeyaml

import (
	"bytes"

	"sigs.k8s.io/yaml"
)

// Marshal is objs as a YAML stream for `kubectl apply -f -`. The fields a
// client never sets (an empty spec or status, a null creationTimestamp) are
// left out, so the manifest reads as if written by hand.
func Marshal(objs ...any) ([]byte, error) {
	var out bytes.Buffer
	for i, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, err
		}
		for _, k := range []string{"spec", "status"} {
			if v, ok := m[k].(map[string]any); ok && len(v) == 0 {
				delete(m, k)
			}
		}
		if md, ok := m["metadata"].(map[string]any); ok {
			if v, has := md["creationTimestamp"]; has && v == nil {
				delete(md, "creationTimestamp")
			}
		}
		if b, err = yaml.Marshal(m); err != nil {
			return nil, err
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}
