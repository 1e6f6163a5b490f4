// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// kxdp steering program: decides, per packet, whether a frame belongs to
// the kxdp dataplane (redirect to the worker's AF_XDP socket) or to the
// node's own network stack (XDP_PASS).
//
// Two entry points share every map:
//
//   steer_pod     attached to the host side of each pod veth. Everything a
//                 pod sends is kxdp's -- pod traffic must never reach the
//                 kernel's forwarding path, where no NetworkPolicy applies --
//                 except the host path below.
//   steer_uplink  attached to the node's uplink. Redirects only what kxdp
//                 owns (VXLAN, Service frontends, NodePorts, local pod IPs,
//                 masquerade reply ports); passes everything else so the
//                 node's own traffic (ssh, kubelet, DNS) keeps working.
//
// Fail closed. Every redirect goes through bpf_redirect_map() with
// XDP_DROP as the fallback action: when no AF_XDP socket sits in the
// XSKMAP slot (kxdp not running, crashed, or still starting) owned
// traffic is dropped instead of falling through to the kernel. The
// kernel removes a socket from every XSKMAP when the socket is closed,
// so a crashed kxdp leaves empty slots behind, and the program itself is
// attached through netlink, which keeps it attached after the process
// exits. Traffic the node owns is XDP_PASS whatever the map holds.
//
// Host path (steer_pod). Traffic between a pod and its own node is always
// allowed by NetworkPolicy (upstream semantics), so two kinds of frames a
// pod sends go straight to the node's kernel with XDP_PASS:
//
//   - ARP replies whose sender is the pod's own address (the `pod_veths`
//     entry of the veth): the answers to the kernel's own resolution of the
//     pod, which the node needs to talk to it. ARP requests stay kxdp's:
//     its pipeline answers for the gateway and proxy-ARPs, so exactly one
//     answer is ever sent. A reply only touches the neighbour entries of
//     this veth, which routes nothing but the pod's own address.
//   - IPv4 from the pod's own address to an address the node's kernel owns
//     (`host_addrs`, filled by the loader with the local addresses of the
//     node namespace) that is not a Service frontend or NodePort. The
//     kernel delivers such packets locally (its route lookup ends in the
//     local table), it never forwards them, so nothing bypasses policy.
//
// A veth without a `pod_veths` entry has no host path (everything is
// redirected). The host path does not depend on a socket being present:
// when kxdp is down the node still reaches its pods (kubelet probes) while
// pod traffic to anything else is dropped.
//
// XSKMAP layout: one map for all interfaces. The loader gives each
// interface a range of slots (`xsk_base`, keyed by ifindex: base and
// count, one slot per rx queue); the slot for a packet is
// base + rx_queue_index. A queue index past the range (queues added after
// the attach) is dropped here, so it can never land in another
// interface's slots. A socket is only ever reachable from the
// (interface, queue) it is bound to, as AF_XDP requires.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define KXDP_XSK_SLOTS 4096
#define KXDP_MAX_IFACES 1024
#define KXDP_MAX_FRONTENDS 65536
#define KXDP_MAX_PODS 16384
#define KXDP_MAX_NODE_PORTS 8192
#define KXDP_MAX_HOST_ADDRS 256

#ifndef ETH_P_ARP
#define ETH_P_ARP 0x0806
#endif
#define KXDP_ARP_REPLY 2

// ARP for IPv4 over Ethernet (RFC 826), the only kind the host path reads.
struct kxdp_arp_eth_ipv4 {
	__u16 htype;
	__u16 ptype;
	__u8 hlen;
	__u8 plen;
	__u16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

// <linux/icmp.h> drags in libc socket headers that do not build for the
// bpf target; the echo header is all we need.
#define KXDP_ICMP_ECHOREPLY 0
struct kxdp_icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 seq;
};

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

// Stats slots. Keep in sync with `StatSlot` in ffi/src/xdp.rs.
enum kxdp_stat {
	STAT_POD_REDIRECT = 0,
	STAT_POD_DROP_NO_SOCKET = 1,
	STAT_UPLINK_REDIRECT = 2,
	STAT_UPLINK_DROP_NO_SOCKET = 3,
	STAT_UPLINK_PASS = 4,
	STAT_POD_PASS = 5,
	STAT_MAX = 6,
};

// Uplink configuration, one entry at key 0. All fields in host byte
// order except addresses, which are in network byte order as on the wire.
struct kxdp_config {
	__u32 masq_ip;        // masquerade source address (0: none)
	__u16 vxlan_port;     // VXLAN UDP destination port (0: disabled)
	__u16 masq_port_lo;   // masquerade reply port range, inclusive
	__u16 masq_port_hi;
	__u16 _pad;
};

// Service frontend: (ip, port, proto). ip network order, port host order.
struct kxdp_frontend {
	__u32 ip;
	__u16 port;
	__u8 proto;
	__u8 _pad;
};

// NodePort: (port, proto) on any address of the node. port host order.
struct kxdp_node_port {
	__u16 port;
	__u8 proto;
	__u8 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, KXDP_XSK_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Slots of one interface in xsks: [base, base + count).
struct xsk_range {
	__u32 base;
	__u32 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_MAX_IFACES);
	__type(key, __u32); // ifindex
	__type(value, struct xsk_range);
} xsk_base SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kxdp_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_MAX_FRONTENDS);
	__type(key, struct kxdp_frontend);
	__type(value, __u8);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_MAX_NODE_PORTS);
	__type(key, struct kxdp_node_port);
	__type(value, __u8);
} node_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_MAX_PODS);
	__type(key, __u32);   // pod IPv4, network order
	__type(value, __u8);
} pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_MAX_IFACES);
	__type(key, __u32);   // ifindex of a pod veth's host side
	__type(value, __u32); // the pod's IPv4, network order
} pod_veths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KXDP_MAX_HOST_ADDRS);
	__type(key, __u32);   // IPv4 the node's kernel owns, network order
	__type(value, __u8);
} host_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);

	if (v)
		*v += 1;
}

// Redirect to this interface's socket for the packet's rx queue, or drop
// (fail closed) when there is none.
static __always_inline int to_socket(struct xdp_md *ctx, __u32 ok_stat, __u32 drop_stat)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct xsk_range *range = bpf_map_lookup_elem(&xsk_base, &ifindex);
	__u32 slot;
	long ret;

	if (!range || ctx->rx_queue_index >= range->count) {
		count(drop_stat);
		return XDP_DROP;
	}
	slot = range->base + ctx->rx_queue_index;
	ret = bpf_redirect_map(&xsks, slot, XDP_DROP);
	count(ret == XDP_REDIRECT ? ok_stat : drop_stat);
	return (int)ret;
}

// True when the frame a pod sent belongs to the node's kernel (see "Host
// path" above).
static __always_inline int pod_to_host(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *pod_ip;
	struct iphdr *ip;
	struct kxdp_frontend fe = {};
	struct kxdp_node_port np = {};
	__u16 dport;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return 0;
	pod_ip = bpf_map_lookup_elem(&pod_veths, &ifindex);
	if (!pod_ip)
		return 0;

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct kxdp_arp_eth_ipv4 *arp = (void *)(eth + 1);
		__u32 spa;

		if ((void *)(arp + 1) > data_end)
			return 0;
		if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
		    arp->hlen != 6 || arp->plen != 4 || arp->op != bpf_htons(KXDP_ARP_REPLY))
			return 0;
		__builtin_memcpy(&spa, arp->spa, 4);
		return spa == *pod_ip;
	}

	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return 0;
	if (ip->version != 4 || ip->ihl < 5)
		return 0;
	if (ip->saddr != *pod_ip || !bpf_map_lookup_elem(&host_addrs, &ip->daddr))
		return 0;
	// Non-first fragments carry no ports; the kernel reassembles them.
	if (ip->frag_off & bpf_htons(0x1fff))
		return 1;
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP &&
	    ip->protocol != IPPROTO_SCTP)
		return 1;
	l4 = (void *)ip + ip->ihl * 4;
	if (l4 + 4 > data_end)
		return 0;
	dport = bpf_ntohs(*(__u16 *)(l4 + 2));
	// Services on node addresses (NodePorts, external IPs) are kxdp's.
	fe.ip = ip->daddr;
	fe.port = dport;
	fe.proto = ip->protocol;
	if (bpf_map_lookup_elem(&frontends, &fe))
		return 0;
	np.port = dport;
	np.proto = ip->protocol;
	if (bpf_map_lookup_elem(&node_ports, &np))
		return 0;
	return 1;
}

SEC("xdp")
int steer_pod(struct xdp_md *ctx)
{
	if (pod_to_host(ctx)) {
		count(STAT_POD_PASS);
		return XDP_PASS;
	}
	return to_socket(ctx, STAT_POD_REDIRECT, STAT_POD_DROP_NO_SOCKET);
}

static __always_inline int uplink_owned(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct kxdp_config *cfg;
	struct kxdp_frontend fe = {};
	struct kxdp_node_port np = {};
	__u32 key = 0;
	__u32 ihl;
	__u16 dport;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return 0;
	// Only IPv4 is steered; ARP, IPv6 and VLAN-tagged frames are the node's.
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return 0;
	if (ip->version != 4 || ip->ihl < 5)
		return 0;

	// Anything routed to a local pod must pass through policy.
	if (bpf_map_lookup_elem(&pod_ips, &ip->daddr))
		return 1;

	// Non-first fragments carry no ports: only pod IPs (above) can match.
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;

	ihl = ip->ihl * 4;
	l4 = (void *)ip + ihl;
	cfg = bpf_map_lookup_elem(&config, &key);

	if (ip->protocol == IPPROTO_ICMP) {
		struct kxdp_icmp_echo *icmp = l4;

		if ((void *)(icmp + 1) > data_end || !cfg)
			return 0;
		// Echo replies to masqueraded pings: the identifier plays the port.
		if (icmp->type == KXDP_ICMP_ECHOREPLY && cfg->masq_ip && ip->daddr == cfg->masq_ip) {
			__u16 id = bpf_ntohs(icmp->id);

			if (id >= cfg->masq_port_lo && id <= cfg->masq_port_hi)
				return 1;
		}
		return 0;
	}
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP &&
	    ip->protocol != IPPROTO_SCTP)
		return 0;
	// TCP, UDP and SCTP all start with 16-bit source and destination ports.
	if (l4 + 4 > data_end)
		return 0;
	dport = bpf_ntohs(*(__u16 *)(l4 + 2));

	if (cfg && ip->protocol == IPPROTO_UDP && cfg->vxlan_port && dport == cfg->vxlan_port)
		return 1;

	fe.ip = ip->daddr;
	fe.port = dport;
	fe.proto = ip->protocol;
	if (bpf_map_lookup_elem(&frontends, &fe))
		return 1;

	np.port = dport;
	np.proto = ip->protocol;
	if (bpf_map_lookup_elem(&node_ports, &np))
		return 1;

	if (cfg && cfg->masq_ip && ip->daddr == cfg->masq_ip && ip->protocol != IPPROTO_SCTP &&
	    dport >= cfg->masq_port_lo && dport <= cfg->masq_port_hi)
		return 1;

	return 0;
}

SEC("xdp")
int steer_uplink(struct xdp_md *ctx)
{
	if (!uplink_owned(ctx)) {
		count(STAT_UPLINK_PASS);
		return XDP_PASS;
	}
	return to_socket(ctx, STAT_UPLINK_REDIRECT, STAT_UPLINK_DROP_NO_SOCKET);
}

// Only non-GPL helpers are used; "GPL" keeps the option open.
char _license[] SEC("license") = "GPL";
