package explain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Table renders a result for people: three header lines (service and how
// it was found, client, routing policy), then one row per endpoint, the
// picked ones first. A gateway service's own endpoints follow, indented
// under the gateway, so "via gateway" can be followed to the instance.
func Table(r Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "service %s (%s)\n", r.Service, r.Lookup)
	fmt.Fprintf(&b, "client: %s\n", r.Client)
	fmt.Fprintln(&b, r.Policy())
	if r.Port != 0 {
		fmt.Fprintf(&b, "port: %d\n", r.Port)
	}
	if r.Waypoint != "" {
		fmt.Fprintf(&b, "waypoint: %s: ztunnel sends this traffic to the waypoint, which picks the endpoint itself; below is the service's own ranking\n", r.Waypoint)
	}
	b.WriteString(endpointTable(r.Endpoints))
	seen := map[string]bool{}
	for _, e := range r.Endpoints {
		g := e.Gateway
		if g == nil || g.Via == nil || seen[g.Address] {
			continue
		}
		seen[g.Address] = true
		fmt.Fprintf(&b, "\ngateway %s: service %s; %s\n", g.Address, g.Service, g.Via.Policy())
		b.WriteString(endpointTable(g.Via.Endpoints))
	}
	return b.String()
}

func endpointTable(eps []Endpoint) string {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	row := func(cells ...string) {
		for i, c := range cells {
			if c == "" {
				c = "-"
			}
			if i > 0 {
				tw.Write([]byte{'\t'})
			}
			tw.Write([]byte(strings.NewReplacer("\t", " ", "\n", " ").Replace(c)))
		}
		tw.Write([]byte{'\n'})
	}
	row("ENDPOINT", "CLUSTER", "NETWORK", "LOCALITY", "CAPACITY", "HEALTH", "RANK", "PROBABILITY", "REASON")
	for _, e := range eps {
		rank, prob := "-", "-"
		if e.Rank >= 0 {
			rank = strconv.Itoa(e.Rank)
		}
		if e.Chosen {
			prob = strconv.FormatFloat(100*e.Probability, 'f', 1, 64) + "%"
		}
		row(e.UID, e.Cluster, e.Network, e.Locality.String(), strconv.FormatUint(uint64(e.Capacity), 10),
			e.Health, rank, prob, e.Reason)
	}
	tw.Flush()
	return buf.String()
}

// JSON renders a result as indented JSON (the Result's own field names),
// with "<" and ">" left readable: the output is for terminals and jq, not HTML.
func JSON(r Result) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	return buf.Bytes(), nil
}
