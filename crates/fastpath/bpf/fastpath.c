// SPDX-License-Identifier: GPL-2.0
//
// sandgate's fast path: established TCP and UDP flows that netfilter
// already allowed are forwarded, and translated as connection tracking
// translated them, without entering netfilter again.
//
// Two entry points, both on TC ingress (tcx):
//   `slot`   on each slot's host-side interface (sgh<index>): packets from
//            a sandbox, keyed by their tuple and the interface they came in
//            on (so a flow's entry serves only its own slot's interface,
//            and a packet forged by another slot finds no entry);
//   `uplink` on the host's other interfaces: replies to a sandbox, keyed by
//            their (translated) tuple.
//
// A packet takes the fast path only when all of these hold, and otherwise
// goes on to netfilter unchanged (TC_ACT_OK), which decides as it always
// did:
//   - IPv4 without options or fragments, or IPv6 with TCP or UDP as the
//     next header, and a TTL or hop limit above 1;
//   - its tuple is in `flows` (user space puts it there once connection
//     tracking calls the flow assured, with the mark netfilter gave it);
//   - the entry's mark is in `valid` (user space mirrors nftables' `valid`
//     map, without the marks of metered slots): a policy change that moves
//     a slot's generation takes its flows off the fast path in the same
//     step as it takes them off netfilter's;
//   - not a TCP SYN, FIN or RST (these mark the entry closing, and the
//     flow stays in netfilter from then on, so connection tracking sees
//     its end);
//   - at least a second since the entry's last packet that went through
//     netfilter (one a second does, so that connection tracking keeps the
//     flow alive and its state current);
//   - the route lookup of the translated packet succeeds (a known
//     neighbour), and for a reply it leads to the slot's own interface
//     (looked up at most once a second per flow, and kept in its entry);
//   - its size is one the next link takes.
//
// No helper here reads or writes anything but the packet and the two maps.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define SLOW_EVERY_NS 1000000000ULL
#define ROUTE_EVERY_NS 1000000000ULL

// Both families in one key: an IPv4 address is stored IPv4-mapped, and
// `family` keeps the two apart.
struct flow_key {
    __u8 src[16];
    __u8 dst[16];
    __be16 sport;
    __be16 dport;
    __u32 ifindex; // the slot's interface for `slot`, 0 for `uplink`
    __u8 proto;
    __u8 family; // 4 or 6
    __u8 pad[2];
};

struct flow_value {
    __u8 addr[16]; // the new source (from a slot) or destination (to it)
    __be16 port;   // the new source or destination port
    __u8 closing;  // set here on SYN, FIN or RST
    __u8 pad;
    __u32 mark;    // the connection's mark: its slot's generation
    __u32 ifindex; // for a reply, the slot's interface it must leave by
    __u32 pad2;
    __u64 packets; // forwarded here
    __u64 bytes;   // forwarded here, IP packets as connection tracking counts
    __u64 last_slow;
    // Where the translated packet went when the route and neighbour were
    // last looked up (`routed_at`; 0: never): looked up again a second
    // later. Written by whichever CPU looks up, all with the same answer
    // unless a route or neighbour changed in between.
    __u64 routed_at;
    __u32 out_ifindex;
    __u32 mtu;
    __u8 dmac[ETH_ALEN];
    __u8 smac[ETH_ALEN];
    __u8 pad3[4];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 262144);
    __type(key, struct flow_key);
    __type(value, struct flow_value);
} flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} valid SEC(".maps");

static __always_inline int forward(struct __sk_buff *skb, int from_slot)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct flow_key key = {};
    struct bpf_fib_lookup fib = {};
    __u32 l3 = sizeof(struct ethhdr), l4;
    __u8 ttl;
    int v4;

    if ((void *)(eth + 1) > end)
        return TC_ACT_OK;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data + l3;
        if ((void *)(ip + 1) > end)
            return TC_ACT_OK;
        if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1)
            return TC_ACT_OK;
        if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
            return TC_ACT_OK;
        v4 = 1;
        key.family = 4;
        key.proto = ip->protocol;
        key.src[10] = key.src[11] = 0xff;
        key.dst[10] = key.dst[11] = 0xff;
        __builtin_memcpy(&key.src[12], &ip->saddr, 4);
        __builtin_memcpy(&key.dst[12], &ip->daddr, 4);
        ttl = ip->ttl;
        l4 = l3 + sizeof(struct iphdr);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + l3;
        if ((void *)(ip6 + 1) > end)
            return TC_ACT_OK;
        if (ip6->hop_limit <= 1)
            return TC_ACT_OK;
        if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
            return TC_ACT_OK;
        v4 = 0;
        key.family = 6;
        key.proto = ip6->nexthdr;
        __builtin_memcpy(key.src, &ip6->saddr, 16);
        __builtin_memcpy(key.dst, &ip6->daddr, 16);
        ttl = ip6->hop_limit;
        l4 = l3 + sizeof(struct ipv6hdr);
    } else {
        return TC_ACT_OK;
    }

    int tcp = key.proto == IPPROTO_TCP;
    if (tcp) {
        struct tcphdr *th = data + l4;
        if ((void *)(th + 1) > end)
            return TC_ACT_OK;
        key.sport = th->source;
        key.dport = th->dest;
    } else {
        struct udphdr *uh = data + l4;
        if ((void *)(uh + 1) > end)
            return TC_ACT_OK;
        key.sport = uh->source;
        key.dport = uh->dest;
    }
    key.ifindex = from_slot ? skb->ingress_ifindex : 0;

    struct flow_value *v = bpf_map_lookup_elem(&flows, &key);
    if (!v)
        return TC_ACT_OK;
    if (tcp) {
        struct tcphdr *th = data + l4;
        if ((void *)(th + 1) > end)
            return TC_ACT_OK;
        if (th->syn || th->fin || th->rst) {
            v->closing = 1;
            return TC_ACT_OK;
        }
    }
    if (v->closing)
        return TC_ACT_OK;
    __u32 mark = v->mark;
    if (!bpf_map_lookup_elem(&valid, &mark))
        return TC_ACT_OK;
    __u64 now = bpf_ktime_get_ns();
    if (now - v->last_slow > SLOW_EVERY_NS) {
        v->last_slow = now;
        return TC_ACT_OK;
    }

    // Where the translated packet goes: the route and neighbour looked up
    // at most once a second per flow (the lookup is a quarter of the
    // program's time), kept in its entry.
    if (now - v->routed_at > ROUTE_EVERY_NS) {
        fib.family = v4 ? AF_INET : AF_INET6;
        fib.l4_protocol = key.proto;
        fib.sport = from_slot ? v->port : key.sport;
        fib.dport = from_slot ? key.dport : v->port;
        fib.ifindex = skb->ingress_ifindex;
        if (v4) {
            __builtin_memcpy(&fib.ipv4_src, from_slot ? &v->addr[12] : &key.src[12], 4);
            __builtin_memcpy(&fib.ipv4_dst, from_slot ? &key.dst[12] : &v->addr[12], 4);
        } else {
            __builtin_memcpy(fib.ipv6_src, from_slot ? v->addr : key.src, 16);
            __builtin_memcpy(fib.ipv6_dst, from_slot ? key.dst : v->addr, 16);
        }
        // The MTU is checked below, against the one kept.
        int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
        if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
            return TC_ACT_OK;
        if (!from_slot && fib.ifindex != v->ifindex)
            return TC_ACT_OK;
        v->out_ifindex = fib.ifindex;
        v->mtu = fib.mtu_result;
        __builtin_memcpy(v->dmac, fib.dmac, ETH_ALEN);
        __builtin_memcpy(v->smac, fib.smac, ETH_ALEN);
        v->routed_at = now;
    }
    // Larger than the next link takes (and not to be segmented later):
    // netfilter's, which sends the ICMP error.
    if (skb->len > v->mtu + sizeof(struct ethhdr) && !skb->gso_size)
        return TC_ACT_OK;
    __u32 out_ifindex = v->out_ifindex;

    // The translation. The transport checksum is mended by the kernel's
    // helper (it knows whether the checksum is still to be completed by
    // the device, which a program cannot read); the rest is written
    // directly, the IPv4 header checksum updated as RFC 1624 says.
    __u32 csum_off = l4 + (tcp ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
    __u64 l4_flags = tcp ? 0 : BPF_F_MARK_MANGLED_0;
    __be16 old_port = from_slot ? key.sport : key.dport;
    __be16 new_port = v->port;
    __be32 old_addr = 0, new_addr = 0;
    if (v4) {
        __builtin_memcpy(&old_addr, from_slot ? &key.src[12] : &key.dst[12], 4);
        __builtin_memcpy(&new_addr, &v->addr[12], 4);
        if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, l4_flags | BPF_F_PSEUDO_HDR | 4))
            return TC_ACT_SHOT;
    } else {
        __s64 diff = bpf_csum_diff((__be32 *)(from_slot ? key.src : key.dst), 16, (__be32 *)v->addr, 16, 0);
        if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, l4_flags | BPF_F_PSEUDO_HDR))
            return TC_ACT_SHOT;
    }
    if (old_port != new_port && bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4_flags | 2))
        return TC_ACT_SHOT;

    // The helpers moved the packet: its pointers are checked again.
    data = (void *)(long)skb->data;
    end = (void *)(long)skb->data_end;
    eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_SHOT;
    __builtin_memcpy(eth->h_dest, v->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, v->smac, ETH_ALEN);
    __be16 *ports = data + l4;
    if (v4) {
        struct iphdr *ip = data + l3;
        if ((void *)(ip + 1) > end || (void *)(ports + 2) > end)
            return TC_ACT_SHOT;
        __u32 sum = (__u16)~ip->check;
        // The address's two halves out, the new ones in.
        sum += (__u16)~(old_addr & 0xffff) + (__u16)~(old_addr >> 16);
        sum += (new_addr & 0xffff) + (new_addr >> 16);
        // TTL and protocol share a 16-bit word: the TTL's byte goes down
        // by one, which is the word's high byte in network order.
        sum += (__u16)~bpf_htons(0x0100);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip->check = (__u16)~sum;
        ip->ttl = ttl - 1;
        if (from_slot)
            ip->saddr = new_addr;
        else
            ip->daddr = new_addr;
    } else {
        struct ipv6hdr *ip6 = data + l3;
        if ((void *)(ip6 + 1) > end || (void *)(ports + 2) > end)
            return TC_ACT_SHOT;
        ip6->hop_limit = ttl - 1;
        if (from_slot)
            __builtin_memcpy(&ip6->saddr, v->addr, 16);
        else
            __builtin_memcpy(&ip6->daddr, v->addr, 16);
    }
    ports[from_slot ? 0 : 1] = new_port;

    __sync_fetch_and_add(&v->packets, 1);
    __sync_fetch_and_add(&v->bytes, skb->len - sizeof(struct ethhdr));
    return bpf_redirect(out_ifindex, 0);
}

SEC("classifier")
int slot(struct __sk_buff *skb)
{
    return forward(skb, 1);
}

SEC("classifier")
int uplink(struct __sk_buff *skb)
{
    return forward(skb, 0);
}

char LICENSE[] SEC("license") = "GPL";
