package ambient

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
)

// vipAllocator hands out the VIPs of global services, one per configured
// range (IPv4 and IPv6) and global hostname.
//
// The first candidate is picked by a hash of the hostname, so the same
// hostname gets the same VIP in every cluster and after a restart without
// any coordination; a collision probes the following addresses. The hash
// (FNV-1a, 64 bits) and the probing order are part of that promise: changing
// either moves VIPs between versions of peerd.
//
// An allocation never moves while its service exists: a newcomer whose hash
// lands on a taken address probes on, whoever would have hashed there first.
// Allocations survive a restart through the seed (Config.VIPs): a seeded
// address stays reserved for its hostname until that hostname claims it, so
// a service that comes back late (its link not yet synced) finds it free.
type vipAllocator struct {
	ranges []vipRange
	// byHost: the live allocations.
	byHost map[string][]netip.Addr
	// owner of every live or reserved address.
	owner map[netip.Addr]string
	// reserved: seeded addresses whose hostname has not come back yet.
	reserved map[string][]netip.Addr
}

// vipRange is one range with the offsets that may be handed out.
type vipRange struct {
	prefix netip.Prefix
	// first usable offset and how many follow it (0: 2^64, the most a
	// uint64 offset can reach).
	first, count uint64
}

// maxProbes bounds the search of a full range, so a huge IPv6 range cannot
// turn one allocation into a scan of 2^64 addresses.
const maxProbes = 1 << 20

func newVIPRange(p netip.Prefix) vipRange {
	hostBits := p.Addr().BitLen() - p.Bits()
	r := vipRange{prefix: p, first: 0}
	if hostBits < 64 {
		r.count = 1 << hostBits
	}
	switch {
	case p.Addr().Is4() && hostBits >= 2:
		// The network and broadcast addresses are never handed out.
		r.first, r.count = 1, r.count-2
	case p.Addr().Is6() && hostBits >= 1:
		// The all-zero host is the subnet-router anycast address.
		r.first = 1
		if r.count != 0 {
			r.count--
		} else {
			r.count = ^uint64(0)
		}
	}
	return r
}

// candidate is the i-th address probed for hash h.
func (r vipRange) candidate(h, i uint64) netip.Addr {
	off := h + i
	if r.count != 0 {
		off %= r.count
	}
	return addOffset(r.prefix.Addr(), r.first+off)
}

func (r vipRange) probes() uint64 {
	if r.count == 0 || r.count > maxProbes {
		return maxProbes
	}
	return r.count
}

// contains reports whether a may be handed out from r.
func (r vipRange) contains(a netip.Addr) bool {
	if !r.prefix.Contains(a) {
		return false
	}
	base := r.prefix.Addr().As16()
	b := a.As16()
	// Offsets beyond 64 bits are never produced by candidate.
	for i := 0; i < 8; i++ {
		if b[i] != base[i] {
			return false
		}
	}
	off := binary.BigEndian.Uint64(b[8:]) - binary.BigEndian.Uint64(base[8:])
	return off >= r.first && (r.count == 0 || off-r.first < r.count)
}

// addOffset adds off to the address a (whose host bits are zero).
func addOffset(a netip.Addr, off uint64) netip.Addr {
	b := a.As16()
	lo := binary.BigEndian.Uint64(b[8:])
	sum := lo + off
	binary.BigEndian.PutUint64(b[8:], sum)
	if sum < lo { // carry into the upper half
		hi := binary.BigEndian.Uint64(b[:8]) + 1
		binary.BigEndian.PutUint64(b[:8], hi)
	}
	out := netip.AddrFrom16(b)
	if a.Is4() {
		return out.Unmap()
	}
	return out
}

func hostnameHash(hostname string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(hostname))
	return h.Sum64()
}

// newVIPAllocator starts from the seed; seeded addresses outside the
// ranges or claimed twice are left out, with a warning each.
func newVIPAllocator(v4, v6 netip.Prefix, seed map[string][]netip.Addr, w *warnings) *vipAllocator {
	a := &vipAllocator{
		byHost:   map[string][]netip.Addr{},
		owner:    map[netip.Addr]string{},
		reserved: map[string][]netip.Addr{},
	}
	for _, p := range []netip.Prefix{v4, v6} {
		a.ranges = append(a.ranges, newVIPRange(p))
	}
	ref := ObjectRef{Kind: "config", Name: "vips"}
	for _, host := range slices.Sorted(maps.Keys(seed)) {
		for _, addr := range seed[host] {
			addr = addr.Unmap()
			switch {
			case !slices.ContainsFunc(a.ranges, func(r vipRange) bool { return r.contains(addr) }):
				w.add(ref, host, fmt.Sprintf("saved VIP %s is outside the VIP ranges: dropped", addr))
			case a.owner[addr] != "":
				w.add(ref, host, fmt.Sprintf("saved VIP %s is also saved for %s: dropped", addr, a.owner[addr]))
			case slices.ContainsFunc(a.reserved[host], func(o netip.Addr) bool { return o.Is4() == addr.Is4() }):
				w.add(ref, host, fmt.Sprintf("saved VIP %s is a second one of its family: dropped", addr))
			default:
				a.owner[addr] = host
				a.reserved[host] = append(a.reserved[host], addr)
			}
		}
	}
	return a
}

// allocate returns hostname's VIPs, one per range, allocating what it does
// not have yet; changed reports a new allocation. A full range is a warning
// on ref and leaves that family out until a later recompute finds room.
func (a *vipAllocator) allocate(hostname string, ref ObjectRef, w *warnings) (addrs []netip.Addr, changed bool) {
	cur, known := a.byHost[hostname]
	if known && len(cur) == len(a.ranges) {
		return cur, false
	}
	seeded := a.reserved[hostname]
	delete(a.reserved, hostname)
	h := hostnameHash(hostname)
	for _, r := range a.ranges {
		if i := slices.IndexFunc(cur, r.contains); i >= 0 {
			addrs = append(addrs, cur[i])
			continue
		}
		if i := slices.IndexFunc(seeded, r.contains); i >= 0 {
			addrs = append(addrs, seeded[i])
			changed = true
			continue
		}
		found := false
		for i := uint64(0); i < r.probes(); i++ {
			c := r.candidate(h, i)
			if _, taken := a.owner[c]; !taken {
				a.owner[c] = hostname
				addrs = append(addrs, c)
				found, changed = true, true
				break
			}
		}
		if !found {
			w.add(ref, "", fmt.Sprintf("no free VIP in %s: the global service has no address of that family", r.prefix))
		}
	}
	// A seeded address of a family that was already allocated goes back.
	for _, s := range seeded {
		if !slices.Contains(addrs, s) {
			delete(a.owner, s)
		}
	}
	if len(addrs) > 0 {
		a.byHost[hostname] = addrs
	}
	return addrs, changed
}

// release frees hostname's VIPs; false when it had none.
func (a *vipAllocator) release(hostname string) bool {
	addrs, ok := a.byHost[hostname]
	if !ok {
		return false
	}
	for _, addr := range addrs {
		delete(a.owner, addr)
	}
	delete(a.byHost, hostname)
	return true
}

// held returns a copy of the live allocations and the reservations not yet
// claimed: both must outlive a restart.
func (a *vipAllocator) held() map[string][]netip.Addr {
	out := make(map[string][]netip.Addr, len(a.byHost)+len(a.reserved))
	for h, addrs := range a.reserved {
		out[h] = slices.Clone(addrs)
	}
	for h, addrs := range a.byHost {
		out[h] = slices.Clone(addrs)
	}
	return out
}

// releaseReserved frees every reservation not yet claimed; false when
// there was none.
func (a *vipAllocator) releaseReserved() bool {
	if len(a.reserved) == 0 {
		return false
	}
	for _, addrs := range a.reserved {
		for _, addr := range addrs {
			delete(a.owner, addr)
		}
	}
	clear(a.reserved)
	return true
}
