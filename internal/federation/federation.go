package federation

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/peerd-mesh/peerd/internal/certs"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// TypeURL is the xDS type of FederatedService resources.
const TypeURL = "type.googleapis.com/peerd.federation.v1.FederatedService"

// ResourceName is the xDS resource name of the exported Service
// namespace/name.
func ResourceName(namespace, name string) string { return namespace + "/" + name }

// ImportedService is one service that the linked cluster Cluster exports, as
// the importer holds it. Its ObjectMeta carries the Service's namespace and
// name, so that (Cluster, Namespace, Name) is its key. It is a
// runtime.Object only so that the discovery index can store it beside the
// Kubernetes objects; it is never sent to an API server.
type ImportedService struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	// Cluster is the exporting cluster, as the importer's istio-remote
	// Gateway names it (never what the peer claims).
	Cluster string
	// Service is the summary as received; it passed Validate.
	Service *federationpb.FederatedService
	// Received is when this version arrived from the peer (zero when it
	// was loaded from saved state). It is not part of the content: Equal
	// ignores it. The serve loop measures convergence from it.
	Received time.Time
}

// NewImported wraps a received summary of cluster.
func NewImported(cluster string, s *federationpb.FederatedService) *ImportedService {
	return &ImportedService{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.GetNamespace(), Name: s.GetName()},
		Cluster:    cluster,
		Service:    s,
	}
}

// DeepCopyObject implements runtime.Object.
func (s *ImportedService) DeepCopyObject() runtime.Object {
	if s == nil {
		return nil
	}
	c := &ImportedService{TypeMeta: s.TypeMeta, Cluster: s.Cluster, Received: s.Received}
	s.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	if s.Service != nil {
		c.Service = proto.Clone(s.Service).(*federationpb.FederatedService)
	}
	return c
}

// Equal reports whether two imported services say the same thing (when
// they arrived does not count).
func (s *ImportedService) Equal(o *ImportedService) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.Cluster == o.Cluster && s.Namespace == o.Namespace && s.Name == o.Name &&
		proto.Equal(s.Service, o.Service)
}

// Limits on what one summary may hold, so a peer cannot make an importer
// hold unbounded data per service.
const (
	MaxPorts = 1024
	MaxSANs  = 4096
	// MaxSANLength, MaxProtocolLength and MaxDistributionLength bound the
	// free-form strings; real values are far shorter.
	MaxSANLength          = 512
	MaxProtocolLength     = 253
	MaxDistributionLength = 64
)

// Validate checks a received summary whose resource name is name. The error
// names the field: `ports[2].protocol: "XTP" is not TCP, UDP or SCTP`.
func Validate(name string, s *federationpb.FederatedService) error {
	if s == nil {
		return errors.New("empty resource")
	}
	var errs []error
	field := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if msgs := validation.IsDNS1123Label(s.GetNamespace()); len(msgs) > 0 {
		field("namespace", "%q: %s", s.GetNamespace(), strings.Join(msgs, "; "))
	}
	if msgs := validation.IsDNS1035Label(s.GetName()); len(msgs) > 0 {
		field("name", "%q: %s", s.GetName(), strings.Join(msgs, "; "))
	}
	if want := ResourceName(s.GetNamespace(), s.GetName()); name != want {
		field("name", "resource is named %q but describes %q", name, want)
	}
	switch s.GetScope() {
	case federationpb.Scope_GLOBAL, federationpb.Scope_GLOBAL_ONLY:
	default:
		field("scope", "%v is not GLOBAL or GLOBAL_ONLY", s.GetScope())
	}
	if len(s.GetPorts()) > MaxPorts {
		field("ports", "%d ports, at most %d", len(s.GetPorts()), MaxPorts)
	}
	seen := map[uint32]bool{}
	for i, p := range s.GetPorts() {
		path := fmt.Sprintf("ports[%d]", i)
		if p.GetPort() < 1 || p.GetPort() > 65535 {
			field(path+".port", "%d is not in 1-65535", p.GetPort())
		}
		if p.GetTargetPort() > 65535 {
			field(path+".target_port", "%d is not in 0-65535", p.GetTargetPort())
		}
		switch p.GetProtocol() {
		case "TCP", "UDP", "SCTP":
		default:
			field(path+".protocol", "%q is not TCP, UDP or SCTP", p.GetProtocol())
		}
		if n := len(p.GetName()); n > 63 {
			field(path+".name", "%d bytes, at most 63 (a DNS label)", n)
		}
		if n := len(p.GetAppProtocol()); n > MaxProtocolLength {
			field(path+".app_protocol", "%d bytes, at most %d", n, MaxProtocolLength)
		}
		if seen[p.GetPort()] {
			field(path+".port", "%d listed twice", p.GetPort())
		}
		seen[p.GetPort()] = true
	}
	if len(s.GetSubjectAltNames()) > MaxSANs {
		field("subject_alt_names", "%d names, at most %d", len(s.GetSubjectAltNames()), MaxSANs)
	} else {
		for i, san := range s.GetSubjectAltNames() {
			if len(san) > MaxSANLength {
				field(fmt.Sprintf("subject_alt_names[%d]", i), "%d bytes, at most %d", len(san), MaxSANLength)
			} else if _, err := certs.ParseSPIFFE(san); err != nil {
				field(fmt.Sprintf("subject_alt_names[%d]", i), "%v", err)
			}
		}
	}
	if n := len(s.GetTrafficDistribution()); n > MaxDistributionLength {
		field("traffic_distribution", "%d bytes, at most %d", n, MaxDistributionLength)
	}
	if l := s.GetLocality(); len(l.GetRegion()) > 253 || len(l.GetZone()) > 253 {
		field("locality", "region or zone longer than 253 bytes")
	}
	if ts := s.GetCreationTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			field("creation_time", "%v", err)
		}
	}
	return errors.Join(errs...)
}
