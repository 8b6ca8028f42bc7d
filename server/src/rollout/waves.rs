//! Which devices go in which wave: a pure function of the plan's waves and the fleet, so a
//! rollout's waves are decided once, when it is created, and the same fleet always gives
//! the same waves (devices are taken in uuid order). Devices that no wave selects go into
//! the last wave; so do devices that join the fleet later (the driver's part).

use super::plan::WaveSpec;
use crate::Error;
use std::collections::BTreeMap;

/// A device of the fleet, as wave selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetMember {
    pub uuid: String,
    pub labels: BTreeMap<String, String>,
}

/// The uuids of each wave, in the plan's order (one list per wave, each in uuid order).
///
/// - `devices: n`: the next `n` devices not in an earlier wave (fewer if fewer remain);
/// - `percent: p`: enough more that the waves so far hold `ceil(p × N / 100)` devices of
///   the fleet's `N`;
/// - `labels`: every device not in an earlier wave whose labels include all the pairs.
///
/// A wave whose selector takes no device is an error naming it, and so is an empty fleet.
pub fn assign_waves(waves: &[WaveSpec], members: &[FleetMember]) -> Result<Vec<Vec<String>>, Error> {
    let mut fleet: Vec<&FleetMember> = members.iter().collect();
    fleet.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    fleet.dedup_by(|a, b| a.uuid == b.uuid);
    if fleet.is_empty() {
        return Err(unprocessable("fleet has no devices".into()));
    }
    if waves.is_empty() {
        return Err(unprocessable("a rollout plan needs at least one wave".into()));
    }
    // The wave each device (in uuid order) was put in.
    let mut wave_of: Vec<Option<usize>> = vec![None; fleet.len()];
    let mut taken = 0usize;
    for (i, wave) in waves.iter().enumerate() {
        let wanted: Vec<usize> = match (wave.devices, wave.percent, &wave.labels) {
            (Some(n), _, _) => free(&wave_of).take(usize::try_from(n).unwrap_or(usize::MAX)).collect(),
            (None, Some(p), _) => free(&wave_of).take(cumulative(p, fleet.len()).saturating_sub(taken)).collect(),
            (None, None, Some(labels)) => {
                free(&wave_of).filter(|&d| labels.iter().all(|(k, v)| fleet[d].labels.get(k) == Some(v))).collect()
            }
            (None, None, None) => {
                return Err(unprocessable(format!("wave {} must have one of devices, percent and labels", i + 1)))
            }
        };
        if wanted.is_empty() {
            return Err(unprocessable(format!(
                "wave {} ({}) selects no device not already in an earlier wave",
                i + 1,
                describe(wave, fleet.len())
            )));
        }
        taken += wanted.len();
        for d in wanted {
            wave_of[d] = Some(i);
        }
    }
    let last = waves.len() - 1;
    let mut assigned: Vec<Vec<String>> = vec![Vec::new(); waves.len()];
    for (member, wave) in fleet.iter().zip(wave_of) {
        assigned[wave.unwrap_or(last)].push(member.uuid.clone());
    }
    Ok(assigned)
}

/// Indexes (in uuid order) of the devices not in a wave yet.
fn free(wave_of: &[Option<usize>]) -> impl Iterator<Item = usize> + '_ {
    wave_of.iter().enumerate().filter(|(_, w)| w.is_none()).map(|(d, _)| d)
}

/// `ceil(percent × fleet / 100)`.
fn cumulative(percent: u8, fleet: usize) -> usize {
    let fleet = u128::try_from(fleet).unwrap_or(u128::MAX / 200);
    usize::try_from((u128::from(percent) * fleet).div_ceil(100)).unwrap_or(usize::MAX)
}

/// The wave's selector, for error messages: `labels site=berlin`, `10% of 50 devices`.
fn describe(wave: &WaveSpec, fleet: usize) -> String {
    match (wave.devices, wave.percent, &wave.labels) {
        (Some(n), _, _) => format!("devices {n}"),
        (None, Some(p), _) => format!("{p}% of {fleet} devices"),
        (None, None, Some(labels)) => {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("labels {}", pairs.join(","))
        }
        (None, None, None) => "no selector".into(),
    }
}

fn unprocessable(reason: String) -> Error {
    Error::Unprocessable { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: u64) -> WaveSpec {
        WaveSpec { devices: Some(n), percent: None, labels: None }
    }
    fn percent(p: u8) -> WaveSpec {
        WaveSpec { devices: None, percent: Some(p), labels: None }
    }
    fn labels(pairs: &[(&str, &str)]) -> WaveSpec {
        let labels = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        WaveSpec { devices: None, percent: None, labels: Some(labels) }
    }

    /// `count` devices `dev-00`…; every `berlin_every`-th (from the first) at site berlin,
    /// the others at site paris.
    fn fleet(count: usize, berlin_every: usize) -> Vec<FleetMember> {
        (0..count)
            .map(|i| {
                let site = if i % berlin_every == 0 { "berlin" } else { "paris" };
                FleetMember { uuid: format!("dev-{i:02}"), labels: BTreeMap::from([("site".into(), site.into())]) }
            })
            .collect()
    }

    fn sizes(waves: &[WaveSpec], members: &[FleetMember]) -> Vec<usize> {
        assign_waves(waves, members).unwrap().iter().map(Vec::len).collect()
    }

    fn reason(waves: &[WaveSpec], members: &[FleetMember]) -> String {
        assign_waves(waves, members).unwrap_err().to_string()
    }

    /// name, waves, fleet, the size of each wave.
    type Sizes = (&'static str, Vec<WaveSpec>, Vec<FleetMember>, Vec<usize>);

    #[test]
    fn wave_sizes() {
        let berlin = [("site", "berlin")];
        #[rustfmt::skip]
        let cases: &[Sizes] = &[
            // 50 devices, every 10th in berlin (dev-00, dev-10, … dev-40): the canary dev-00
            // is one of them, so the labels wave takes the other 4 not taken by 10%.
            ("canary, 10%, berlin, rest", vec![devices(1), percent(10), labels(&berlin), percent(100)], fleet(50, 10), vec![1, 4, 4, 41]),
            ("percents are cumulative", vec![percent(10), percent(50), percent(100)], fleet(50, 10), vec![5, 20, 25]),
            ("devices beyond the fleet take what remains", vec![devices(2), devices(10)], fleet(3, 1), vec![2, 1]),
            ("leftovers go into the last wave", vec![devices(1), labels(&berlin)], fleet(10, 5), vec![1, 9]),
            ("leftovers after a percent below 100", vec![percent(10), percent(30)], fleet(10, 1), vec![1, 9]),
            // Rounding up with 3 devices: 33% is 0.99 → 1, 34% is 1.02 → 2, 67% is 2.01 → 3.
            ("33% of 3", vec![percent(33), percent(100)], fleet(3, 1), vec![1, 2]),
            ("34% of 3", vec![percent(34), percent(100)], fleet(3, 1), vec![2, 1]),
            ("1% then 67% of 3", vec![percent(1), percent(67)], fleet(3, 1), vec![1, 2]),
        ];
        for (name, waves, members, want) in cases {
            assert_eq!(&sizes(waves, members), want, "{name}");
        }
    }

    #[test]
    fn devices_are_taken_in_uuid_order_and_each_once() {
        let mut members = fleet(6, 2);
        members.reverse();
        let waves = assign_waves(&[devices(2), labels(&[("site", "berlin")]), percent(100)], &members).unwrap();
        assert_eq!(waves[0], ["dev-00", "dev-01"]);
        assert_eq!(waves[1], ["dev-02", "dev-04"], "dev-00 is in an earlier wave");
        assert_eq!(waves[2], ["dev-03", "dev-05"]);
        let mut all: Vec<&String> = waves.iter().flatten().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn a_wave_that_selects_nobody_is_named() {
        let berlin = [("site", "berlin")];
        #[rustfmt::skip]
        let cases: &[(&str, Vec<WaveSpec>, Vec<FleetMember>, &str)] = &[
            ("labels nobody has", vec![devices(1), percent(10), labels(&[("site", "tokyo")])], fleet(50, 10), "wave 3 (labels site=tokyo) selects no device not already in an earlier wave"),
            ("labels taken by earlier waves", vec![labels(&berlin), labels(&berlin), percent(100)], fleet(10, 2), "wave 2 (labels site=berlin) selects no device"),
            ("percent already reached", vec![devices(5), percent(10), percent(100)], fleet(20, 1), "wave 2 (10% of 20 devices) selects no device"),
            ("67% of 3 rounds up to all", vec![percent(1), percent(67), percent(100)], fleet(3, 1), "wave 3 (100% of 3 devices) selects no device"),
            ("nothing left for a count", vec![percent(100), devices(1)], fleet(4, 1), "wave 2 (devices 1) selects no device"),
            ("empty fleet", vec![percent(100)], vec![], "fleet has no devices"),
        ];
        for (name, waves, members, want) in cases {
            let got = reason(waves, members);
            assert!(got.contains(want), "{name}: {got}");
        }
    }

    #[test]
    fn labels_must_all_match() {
        let mut members = fleet(4, 2);
        members[0].labels.insert("tier".into(), "edge".into());
        let waves = assign_waves(&[labels(&[("site", "berlin"), ("tier", "edge")]), percent(100)], &members).unwrap();
        assert_eq!(waves, [vec!["dev-00".to_string()], vec!["dev-01".into(), "dev-02".into(), "dev-03".into()]]);
    }
}
