package ambient

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// LabelServiceScope makes a Service (or every Service of a namespace) global.
const LabelServiceScope = "solo.io/service-scope"

// Values of LabelServiceScope.
const (
	ScopeGlobal     = "global"
	ScopeGlobalOnly = "global-only"
)

// scope is the resolved service scope of a local Service.
type scope int

const (
	scopeNone scope = iota
	// scopeGlobal: exported, local endpoints join the global service.
	scopeGlobal
	// scopeGlobalOnly: as scopeGlobal, and the plain svc.<domain-suffix>
	// Service also carries the remote endpoints.
	scopeGlobalOnly
)

func (s scope) global() bool { return s != scopeNone }

// proto is the scope as exported.
func (s scope) proto() federationpb.Scope {
	switch s {
	case scopeGlobal:
		return federationpb.Scope_GLOBAL
	case scopeGlobalOnly:
		return federationpb.Scope_GLOBAL_ONLY
	}
	return federationpb.Scope_SCOPE_UNSPECIFIED
}

// serviceScope resolves a Service's scope: its own solo.io/service-scope
// label when set, else its namespace's. A value that is neither "global"
// nor "global-only" is a warning on the object that carries it and counts as
// no scope; it does not fall through to the namespace, since the Service
// said something, only not something peerd understands.
func serviceScope(s *corev1.Service, ns *corev1.Namespace, w *warnings) scope {
	field := "metadata.labels[" + LabelServiceScope + "]"
	if v := s.Labels[LabelServiceScope]; v != "" {
		return parseScope(v, objectRef(KindService, s.Namespace, s.Name), field, w)
	}
	if v := namespaceScopeLabel(ns); v != "" {
		return parseScope(v, objectRef(KindNamespace, "", ns.Name), field, w)
	}
	return scopeNone
}

func parseScope(v string, ref ObjectRef, field string, w *warnings) scope {
	switch v {
	case ScopeGlobal:
		return scopeGlobal
	case ScopeGlobalOnly:
		return scopeGlobalOnly
	}
	w.add(ref, field, fmt.Sprintf("unknown service scope %q (want %q or %q): not exported", v, ScopeGlobal, ScopeGlobalOnly))
	return scopeNone
}

func namespaceScopeLabel(ns *corev1.Namespace) string {
	if ns == nil {
		return ""
	}
	return ns.Labels[LabelServiceScope]
}
