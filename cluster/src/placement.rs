//! Where each wallet lives: pure, the same on every node that sees the same members.
//!
//! A wallet hashes to one of [`SHARDS`] shards (fixed forever: changing it moves every wallet); each shard
//! belongs to the member with the highest rendezvous score for it (highest random weight), so a member
//! joining takes about 1/N of the shards from the others and a member leaving gives away only its own.
//! Hashes are pinned (SipHash-1-3 with constant keys, then a fixed mixer): every build and every node agree.

use std::hash::Hasher;

/// Shards wallets hash to. Many more than nodes, so that with 100 nodes and a million wallets the busiest
/// node has at most ~5% more wallets than the mean (2^16 shards gave ~10%): the placement simulation.
pub const SHARDS: u32 = 1 << 18;

/// One of the [`SHARDS`] slices of the wallets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard(u32);

impl Shard {
    pub fn new(index: u32) -> Option<Self> {
        (index < SHARDS).then_some(Self(index))
    }

    pub fn index(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn pinned_hash(parts: &[&[u8]]) -> u64 {
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0x7461_6c6c_7900_0001, 0x7368_6172_6473_0001);
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.write_u64(part.len() as u64);
        hasher.write(part);
    }
    hasher.finish()
}

/// SplitMix64's finalizer: a bijection of u64 that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The shard of tenant `tenant`'s wallet `wallet`.
pub fn shard_of(tenant: &str, wallet: &str) -> Shard {
    Shard((pinned_hash(&[tenant.as_bytes(), wallet.as_bytes()]) % u64::from(SHARDS)) as u32)
}

/// The owner of every shard among a set of members (node ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Sorted, no repeats.
    members: Vec<String>,
    /// `owners[shard]` is an index into `members`; empty when there are no members.
    owners: Vec<u16>,
}

/// Most members a placement holds (indices are 16-bit).
pub const MEMBERS_MAX: usize = u16::MAX as usize;

impl Placement {
    /// The placement over `members` (any order, repeats ignored). At most [`MEMBERS_MAX`] members: the
    /// rest, in sorted order, are left out.
    pub fn new(members: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort();
        members.dedup();
        members.truncate(MEMBERS_MAX);
        let seeds: Vec<u64> = members.iter().map(|m| pinned_hash(&[m.as_bytes()])).collect();
        let owners = if members.is_empty() {
            Vec::new()
        } else {
            (0..SHARDS)
                .map(|shard| {
                    let point = mix(u64::from(shard));
                    let best = (0..seeds.len()).max_by_key(|&i| (mix(seeds[i] ^ point), i)).expect("members is not empty");
                    best as u16
                })
                .collect()
        };
        Self { members, owners }
    }

    /// The members, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The member that owns `shard`, or `None` when there are no members.
    pub fn owner(&self, shard: Shard) -> Option<&str> {
        let index = *self.owners.get(shard.0 as usize)?;
        Some(self.members[usize::from(index)].as_str())
    }

    /// The owner of tenant `tenant`'s wallet `wallet`.
    pub fn owner_of(&self, tenant: &str, wallet: &str) -> Option<&str> {
        self.owner(shard_of(tenant, wallet))
    }

    /// How many shards each member owns, in the order of [`Self::members`].
    pub fn shards_per_member(&self) -> Vec<u32> {
        let mut counts = vec![0; self.members.len()];
        for &owner in &self.owners {
            counts[usize::from(owner)] += 1;
        }
        counts
    }

    /// Shards whose owner differs between `self` and `other` (a shard with no owner on one side counts).
    pub fn moved(&self, other: &Placement) -> u32 {
        (0..SHARDS).filter(|&s| self.owner(Shard(s)) != other.owner(Shard(s))).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values this code gave when placement was first released (a regression pin, not an independent
    /// check): changing them would move every wallet of every running cluster.
    #[test]
    fn hashes_are_pinned() {
        assert_eq!(shard_of("acme", "c-1").index(), shard_of("acme", "c-1").index());
        assert_eq!(shard_of("acme", "c-1"), Shard(PINNED_ACME_C1));
        assert_ne!(shard_of("ab", "c"), shard_of("a", "bc"));
        let placement = Placement::new(["node-a", "node-b", "node-c"]);
        assert_eq!(placement.owner(Shard(0)), Some(PINNED_OWNER_OF_SHARD_0));
    }

    const PINNED_ACME_C1: u32 = 234_978;
    const PINNED_OWNER_OF_SHARD_0: &str = "node-c";

    #[test]
    fn no_members_own_nothing_and_one_member_owns_everything() {
        assert_eq!(Placement::new(Vec::<String>::new()).owner_of("acme", "c-1"), None);
        let alone = Placement::new(["n1"]);
        assert_eq!(alone.shards_per_member(), vec![SHARDS]);
        assert_eq!(Placement::new(["b", "a", "b"]).members(), ["a", "b"]);
    }

    #[test]
    fn a_member_leaving_gives_away_only_its_own_shards() {
        let three = Placement::new(["a", "b", "c"]);
        let two = Placement::new(["a", "c"]);
        for s in (0..SHARDS).step_by(97) {
            let shard = Shard(s);
            if three.owner(shard) != Some("b") {
                assert_eq!(three.owner(shard), two.owner(shard), "shard {s} moved though its owner stayed");
            }
        }
        assert_eq!(three.moved(&two), three.shards_per_member()[1]);
    }
}
