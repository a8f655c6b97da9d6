//! Issue 17's placement simulation: 100 nodes and a million wallets. The busiest node holds at most 10%
//! more wallets than the mean, a join moves at most 1.2/N of the shards (all to the newcomer), and a
//! leave moves only the leaver's.

use tally_cluster::placement::{Placement, SHARDS, Shard, shard_of};

fn nodes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:03}")).collect()
}

#[test]
fn a_hundred_nodes_hold_a_million_wallets_evenly_and_a_join_moves_one_nth() {
    let members = nodes(100);
    let placement = Placement::new(members.clone());
    let mut load = std::collections::HashMap::<&str, u64>::new();
    for w in 0..1_000_000u32 {
        let tenant = ["acme", "globex", "initech"][(w % 3) as usize];
        *load.entry(placement.owner_of(tenant, &format!("c-{w}")).unwrap()).or_default() += 1;
    }
    assert_eq!(load.len(), 100, "every node holds wallets");
    let max = *load.values().max().unwrap() as f64;
    let ratio = max / (1_000_000.0 / 100.0);
    eprintln!("max/mean wallets per node: {ratio:.3}");
    assert!(ratio <= 1.1, "max/mean {ratio:.3}");

    let mut grown = members.clone();
    grown.push("node-new".into());
    let joined = Placement::new(grown);
    let moved = placement.moved(&joined);
    let per_n = f64::from(moved) / f64::from(SHARDS) * 101.0;
    eprintln!("a join moved {per_n:.3}/N of the shards");
    assert!(per_n <= 1.2, "{per_n:.3}/N moved");
    for s in 0..SHARDS {
        let shard = Shard::new(s).unwrap();
        if placement.owner(shard) != joined.owner(shard) {
            assert_eq!(joined.owner(shard), Some("node-new"), "shard {s} moved between two old nodes");
        }
    }
}

#[test]
fn a_restarted_node_takes_back_exactly_its_shards() {
    let three = Placement::new(["a", "b", "c"]);
    let again = Placement::new(["c", "b", "a"]);
    assert_eq!(three, again, "the order members are seen in does not matter");
    let without = Placement::new(["a", "c"]);
    assert_eq!(Placement::new(["a", "b", "c"]).moved(&without), three.moved(&without));
    let shares = three.shards_per_member();
    assert_eq!(shares.iter().sum::<u32>(), SHARDS);
    assert!(shares.iter().all(|&s| s > SHARDS / 3 - SHARDS / 50 && s < SHARDS / 3 + SHARDS / 50), "{shares:?}");
    assert_eq!(shard_of("acme", "c-1"), shard_of("acme", "c-1"));
}
