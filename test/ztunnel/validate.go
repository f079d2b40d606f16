package ztunnel

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// ValidateAddress applies the checks that make ztunnel reject an Address
// (the response is then NACKed, the other resources still applied).
func ValidateAddress(a *workloadpb.Address) error {
	if err := validateEnums(a.ProtoReflect()); err != nil {
		return err
	}
	switch t := a.GetType().(type) {
	case *workloadpb.Address_Workload:
		return validateWorkload(t.Workload)
	case *workloadpb.Address_Service:
		return validateService(t.Service)
	default:
		return errors.New("address has neither workload nor service")
	}
}

func validateWorkload(w *workloadpb.Workload) error {
	for i, ip := range w.GetAddresses() {
		if err := checkIP(ip); err != nil {
			return fmt.Errorf("addresses[%d]: %w", i, err)
		}
	}
	if w.GetTunnelProtocol() == workloadpb.TunnelProtocol_LEGACY_ISTIO_MTLS {
		return errors.New("tunnel_protocol: LEGACY_ISTIO_MTLS is not supported")
	}
	for key := range w.GetServices() {
		if !strings.Contains(key, "/") {
			return fmt.Errorf("services: key %q is not namespace/hostname", key)
		}
	}
	if err := checkGateway("waypoint", w.GetWaypoint()); err != nil {
		return err
	}
	return checkGateway("network_gateway", w.GetNetworkGateway())
}

func validateService(s *workloadpb.Service) error {
	for i, a := range s.GetAddresses() {
		if err := checkIP(a.GetAddress()); err != nil {
			return fmt.Errorf("addresses[%d]: %w", i, err)
		}
	}
	if err := checkGateway("waypoint", s.GetWaypoint()); err != nil {
		return err
	}
	for i, ww := range s.GetWeightedWaypoints() {
		if ww.GetDestination() == nil {
			return fmt.Errorf("weighted_waypoints[%d]: destination: missing", i)
		}
		if err := checkGateway(fmt.Sprintf("weighted_waypoints[%d].destination", i), ww.GetDestination()); err != nil {
			return err
		}
	}
	for i, scope := range s.GetLoadBalancing().GetRoutingPreference() {
		if scope == workloadpb.LoadBalancing_UNSPECIFIED_SCOPE {
			return fmt.Errorf("load_balancing.routing_preference[%d]: UNSPECIFIED_SCOPE", i)
		}
	}
	return nil
}

func checkGateway(field string, g *workloadpb.GatewayAddress) error {
	if g == nil {
		return nil
	}
	switch d := g.GetDestination().(type) {
	case nil:
		return fmt.Errorf("%s: no destination", field)
	case *workloadpb.GatewayAddress_Address:
		if err := checkIP(d.Address.GetAddress()); err != nil {
			return fmt.Errorf("%s.address: %w", field, err)
		}
	}
	return nil
}

func checkIP(b []byte) error {
	if len(b) != 4 && len(b) != 16 {
		return fmt.Errorf("IP of %d bytes, want 4 or 16", len(b))
	}
	return nil
}

// validateEnums rejects any enum value the message's schema does not define
// (ztunnel's generated types have closed enums).
func validateEnums(m protoreflect.Message) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		err = checkField(fd, v)
		return err == nil
	})
	return err
}

func checkField(fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	switch {
	case fd.IsList():
		l := v.List()
		for i := 0; i < l.Len(); i++ {
			if err := checkValue(fd, l.Get(i)); err != nil {
				return fmt.Errorf("%s[%d]: %w", fd.Name(), i, err)
			}
		}
	case fd.IsMap():
		var err error
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			if e := checkValue(fd.MapValue(), mv); e != nil {
				err = fmt.Errorf("%s[%v]: %w", fd.Name(), k.Interface(), e)
			}
			return err == nil
		})
		return err
	default:
		if err := checkValue(fd, v); err != nil {
			return fmt.Errorf("%s: %w", fd.Name(), err)
		}
	}
	return nil
}

func checkValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		if fd.Enum().Values().ByNumber(v.Enum()) == nil {
			return fmt.Errorf("unknown enum value %d", v.Enum())
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if fd.Message().FullName() == "google.protobuf.Any" {
			return nil // extension configs are opaque to ztunnel
		}
		return validateEnums(v.Message())
	}
	return nil
}
