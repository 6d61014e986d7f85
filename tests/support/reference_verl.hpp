// tests/support/reference_verl.hpp: verl's losses, KL forms and rollout correction written plainly in
// double from golden/README.md and MATH-peers.md, for the finite-difference and metric tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "reference.hpp"

namespace ref_verl {

struct Result {
  double loss = 0, pg = 0, entropy_agg = 0, kl_agg = 0;
  double clipfrac = 0, clipfrac_lower = 0, ppo_kl = 0;
  std::vector<double> is_weight;   // the factor on each token's policy loss (0 at padding)
  std::vector<uint8_t> keep;       // m' (0 at padding)
  std::vector<uint8_t> selected;   // kl_cov: the top-k tokens
  cgrpo::RolloutMetrics rollout;
};

inline double mmean(const std::vector<double>& v, const std::vector<double>& m) {
  double s = 0, n = 0;
  for (size_t t = 0; t < v.size(); ++t)
    if (m[t] != 0) s += v[t] * m[t], n += m[t];
  return s / (n + 1e-8);
}

// verl's agg_loss with the config's denominators (golden README, "Conventions" and "verl cases,
// third set"): token-mean N (counted on the term's mask m, or on the response mask with
// token_count_from_response_mask: verl's engine batch_num_tokens), seq-mean-* over B+ (legacy
// dp_actor) or all B rows (engine), n_i + row_count_eps, sum-norm / L or / (B L), token-sum.
inline double agg(cgrpo::Aggregation mode, const cgrpo::AggregationConvention& conv, const ref::Batch& b,
                  const std::vector<double>& v, const std::vector<double>& m, const std::vector<double>& response) {
  double total = 0, n_all = 0, nonempty = 0, seq_sum = 0, n_response = 0;
  int64_t L = 0;
  for (int64_t i = 0; i < b.B; ++i) {
    double s = 0, n = 0;
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      if (m[t] != 0) s += v[t] * m[t], n += m[t];
      n_response += response[t];
    }
    total += s;
    n_all += n;
    L = std::max<int64_t>(L, b.offsets[i + 1] - b.offsets[i]);
    if (n > 0) {
      nonempty += 1;
      seq_sum += mode == cgrpo::Aggregation::seq_mean_token_mean ? s / (n + conv.row_count_eps) : s;
    }
  }
  const double rows = conv.count_empty_rows ? static_cast<double>(b.B) : nonempty;
  const double N = (conv.token_count_from_response_mask ? n_response : n_all) + conv.token_mean_eps;
  switch (mode) {
    case cgrpo::Aggregation::token_mean: return N > 0 ? total / N : 0.0;
    case cgrpo::Aggregation::seq_mean_token_sum:
    case cgrpo::Aggregation::seq_mean_token_mean: return rows > 0 ? seq_sum / rows : 0.0;
    case cgrpo::Aggregation::seq_mean_token_sum_norm:
      return total / (conv.sum_norm_per_row ? rows * static_cast<double>(L) : static_cast<double>(L));
    case cgrpo::Aggregation::token_sum: return total;
  }
  return 0.0;
}

inline double kl_estimator(cgrpo::KlEstimator k, double logp, double ref) {
  if (k == cgrpo::KlEstimator::k3) {
    const double d = std::min(std::max(ref - logp, -20.0), 20.0);
    return std::min(std::max(std::exp(d) - d - 1.0, -10.0), 10.0);
  }
  return ref::kl_value(k, logp, ref);
}

inline double rejection_stat(int order, double e) {
  return order == 1 ? -e : order == 2 ? 0.5 * e * e : std::exp(e) - 1.0 - e;
}

// The rollout correction of verl: weights, kept mask and metrics over mask m, from the detached
// training log-probs `train` (old_logp decoupled, log p bypass).
inline void rollout(const ref::Batch& b, const cgrpo::RolloutCorrectionConfig& rc, const std::vector<double>& train,
                    const std::vector<double>& roll, const std::vector<double>& m, std::vector<double>& weight,
                    std::vector<uint8_t>& keep, cgrpo::RolloutMetrics& out) {
  const int64_t T = b.T;
  // IcePop (golden README "verl cases, third set"): w = u inside [lo, hi], else 0; lo = its bound, else 1 / T.
  const bool icepop = rc.is_mode == cgrpo::RolloutIsMode::icepop, applied = rc.metrics_from_applied_weights;
  const double thr = rc.is_threshold, lo_thr = icepop ? rc.is_threshold_lower : 1.0 / thr;
  const bool seq = rc.is_level == cgrpo::RolloutIsLevel::sequence, weighted = rc.is_level != cgrpo::RolloutIsLevel::none;
  std::vector<double> d(T), e(T), u(T, 0.0), S(b.B, 0.0), n(b.B, 0.0);
  std::vector<int64_t> row(T);
  for (int64_t i = 0; i < b.B; ++i)
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      row[t] = i;
      d[t] = train[t] - roll[t];
      e[t] = std::min(std::max(d[t], -20.0), 20.0);
      S[i] += m[t] * d[t];
      n[i] += m[t];
    }
  for (int64_t t = 0; t < T; ++t) u[t] = m[t] * std::exp(seq ? std::min(std::max(S[row[t]], -20.0), 20.0) : e[t]);
  weight.assign(T, 0.0);
  for (int64_t t = 0; t < T; ++t)
    weight[t] = m[t] == 0 ? 0.0 : !weighted ? 1.0 : icepop ? (u[t] >= lo_thr && u[t] <= thr ? u[t] : 0.0) : std::min(u[t], thr);
  const std::vector<double> applied_w = weight;  // the metrics read the weights before batch normalization
  if (weighted && rc.is_batch_normalize) {
    double mean;
    if (seq) {
      double s = 0, rows = 0;
      for (int64_t i = 0; i < b.B; ++i) {
        double ws = 0;
        for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) ws += weight[t] * m[t];
        if (n[i] > 0) s += ws / (n[i] + 1e-8), rows += 1;
      }
      mean = s / std::max(rows, 1e-8);
    } else {
      mean = mmean(weight, m);
    }
    if (mean > 1e-8) {
      for (double& w : weight) w /= mean;
      out.is_batch_norm_factor = mean;
    } else {
      out.is_batch_norm_factor = 1.0;
    }
  }
  const double N = std::accumulate(m.begin(), m.end(), 0.0);
  double rows_nonempty = 0;
  for (int64_t i = 0; i < b.B; ++i) rows_nonempty += n[i] > 0 ? 1.0 : 0.0;
  if (weighted) {
    // b178a3c: the statistics of u (std and ESS of clamp(u, 1/T, T)); 1dda039: of the applied w.
    out.is_mean = mmean(applied ? applied_w : u, m);
    if (seq) {
      out.is_max = std::exp(std::min(*std::max_element(S.begin(), S.end()), 20.0));
      out.is_min = std::exp(*std::min_element(S.begin(), S.end()));
      double hi = 0, lo = 0;
      for (double s : S) hi += s > std::log(thr), lo += s < std::log(lo_thr);
      out.is_ratio_fraction_high = hi / b.B;
      out.is_ratio_fraction_low = lo / b.B;
    } else {
      double mx = -INFINITY, mn = INFINITY;
      std::vector<double> above(T), below(T);
      const std::vector<double>& x = applied ? applied_w : u;
      for (int64_t t = 0; t < T; ++t) {
        if (m[t] != 0) mx = std::max(mx, x[t]), mn = std::min(mn, x[t]);
        above[t] = u[t] > thr;
        below[t] = u[t] < lo_thr;
      }
      out.is_max = mx;
      out.is_min = mn;
      out.is_ratio_fraction_high = mmean(above, m);
      out.is_ratio_fraction_low = mmean(below, m);
    }
    std::vector<double> uc(T), uc2(T);
    for (int64_t t = 0; t < T; ++t) {
      uc[t] = applied ? applied_w[t] : std::min(std::max(u[t], lo_thr), thr);
      uc2[t] = uc[t] * uc[t];
    }
    const double mean_uc = mmean(uc, m);
    if (N > 1) out.is_std = std::sqrt(std::max(0.0, mmean(uc2, m) - mean_uc * mean_uc));
    std::vector<double> normed(T);
    for (int64_t t = 0; t < T; ++t) normed[t] = std::pow(uc[t] / (mean_uc + 1e-8), 2);
    const double mean_normed = mmean(normed, m);
    out.is_eff_sample_size = mean_normed > 0 ? 1.0 / mean_normed : 0.0;  // all weights zeroed: 0 (verl: inf)
    std::vector<double> row_mean(b.B, 0.0), raw_row_mean(b.B, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      row_mean[row[t]] += (applied ? applied_w[t] : u[t]) * m[t];
      raw_row_mean[row[t]] += u[t] * m[t];
    }
    for (int64_t i = 0; i < b.B; ++i) row_mean[i] /= n[i] + 1e-8, raw_row_mean[i] /= n[i] + 1e-8;
    out.is_seq_mean = std::accumulate(row_mean.begin(), row_mean.end(), 0.0) / b.B;
    out.is_seq_max = *std::max_element(row_mean.begin(), row_mean.end());
    out.is_seq_min = *std::min_element(row_mean.begin(), row_mean.end());
    double ss = 0, dev = 0, high = 0, low = 0;
    for (int64_t i = 0; i < b.B; ++i) {
      ss += (row_mean[i] - out.is_seq_mean) * (row_mean[i] - out.is_seq_mean);
      dev = std::max(dev, std::abs(row_mean[i] - 1.0));
      high += raw_row_mean[i] > thr;
      low += raw_row_mean[i] < lo_thr;
    }
    out.is_seq_std = b.B > 1 ? std::sqrt(ss / (b.B - 1)) : 0.0;
    out.is_seq_max_deviation = dev;
    out.is_seq_fraction_high = high / b.B;
    out.is_seq_fraction_low = low / b.B;
    if (icepop) {
      std::vector<double> oob(T);
      for (int64_t t = 0; t < T; ++t) oob[t] = u[t] < lo_thr || u[t] > thr;
      out.is_oob_ratio = mmean(oob, m);
    }
  }
  keep.assign(T, 0);
  std::vector<double> keep_all(T, 1.0);
  for (int k = 0; k < rc.num_rejection_options; ++k) {
    const cgrpo::RejectionOption& o = rc.rejection[k];
    const int s = static_cast<int>(o.statistic);
    const int scope = s < 9 ? s / 3 : 3, order = s < 9 ? s % 3 + 1 : s - 7;
    std::vector<double> stat(T), row_stat(b.B, 0.0), kept(T);
    for (int64_t i = 0; i < b.B; ++i) {
      double sum = 0, mx = -INFINITY;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
        if (m[t] != 0) sum += rejection_stat(order, e[t]), mx = std::max(mx, rejection_stat(order, e[t]));
      row_stat[i] = scope == 1 ? sum : scope == 2 ? sum / (n[i] + 1e-8) : (n[i] > 0 ? mx : 0.0);
    }
    double lo, hi;
    if (order == 1) {
      lo = std::log(o.lower == 0 ? 1.0 / o.upper : o.lower);
      hi = std::log(o.upper);
    } else {
      lo = -INFINITY;
      hi = o.upper;
    }
    for (int64_t t = 0; t < T; ++t) {
      stat[t] = scope == 0 ? rejection_stat(order, e[t]) : row_stat[row[t]];
      kept[t] = stat[t] >= lo && stat[t] <= hi ? 1.0 : 0.0;
      keep_all[t] *= kept[t];
    }
    cgrpo::RolloutMetrics::Option& om = out.rs_option[k];
    om.mean = mmean(stat, m);
    double mx = -INFINITY, mn = INFINITY, rejected_rows = 0;
    for (int64_t i = 0; i < b.B; ++i) {
      bool any = false;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
        if (m[t] == 0) continue;
        any = any || kept[t] == 0;
        if (scope == 0) mx = std::max(mx, stat[t]), mn = std::min(mn, stat[t]);
      }
      if (scope != 0 && n[i] > 0) mx = std::max(mx, row_stat[i]), mn = std::min(mn, row_stat[i]);
      rejected_rows += any;
    }
    om.max = mx;
    om.min = mn;
    std::vector<double> rejected(T);
    for (int64_t t = 0; t < T; ++t) rejected[t] = 1.0 - kept[t];
    om.masked_fraction = mmean(rejected, m);
    om.seq_masked_fraction = rows_nonempty > 0 ? rejected_rows / rows_nonempty : 0.0;
  }
  if (rc.num_rejection_options > 0) {
    std::vector<double> rejected(T);
    double rows_rejected = 0;
    for (int64_t t = 0; t < T; ++t) rejected[t] = 1.0 - keep_all[t];
    for (int64_t i = 0; i < b.B; ++i) {
      bool any = false;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) any = any || (m[t] != 0 && keep_all[t] == 0);
      rows_rejected += any;
    }
    out.rs_masked_fraction = mmean(rejected, m);
    out.rs_seq_masked_fraction = rows_rejected / b.B;
  }
  for (int64_t t = 0; t < T; ++t) keep[t] = m[t] != 0 && keep_all[t] != 0;
  std::vector<double> neg_d(T), k3(T), rho2(T);
  for (int64_t t = 0; t < T; ++t) {
    neg_d[t] = roll[t] - train[t];
    k3[t] = std::exp(d[t]) - d[t] - 1.0;
    rho2[t] = std::exp(e[t]) * std::exp(e[t]);
  }
  out.kl = mmean(neg_d, m);
  out.k3_kl = mmean(k3, m);
  out.chi2_token = mmean(rho2, m) - 1.0;
  double chi2_seq = 0, tp = 0, tlp = 0, rp = 0, rlp = 0, diff_sum = 0, abs_sum = 0, ratio = 0;
  double dmax = -INFINITY, dmin = INFINITY;
  for (int64_t i = 0; i < b.B; ++i) {
    chi2_seq += std::exp(2.0 * std::min(std::max(S[i], -20.0), 20.0));
    double st = 0, sr = 0;
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) st += train[t] * m[t], sr += roll[t] * m[t];
    const double mt = st / (n[i] + 1e-8), mr = sr / (n[i] + 1e-8), diff = mr - mt;
    tp += std::exp(-mt), tlp += -mt, rp += std::exp(-mr), rlp += -mr;
    diff_sum += diff, abs_sum += std::fabs(diff), ratio += std::exp(diff);
    dmax = std::max(dmax, diff), dmin = std::min(dmin, diff);
  }
  out.chi2_seq = chi2_seq / b.B - 1.0;
  out.training_ppl = tp / b.B;
  out.training_log_ppl = tlp / b.B;
  out.rollout_ppl = rp / b.B;
  out.rollout_log_ppl = rlp / b.B;
  out.log_ppl_diff = diff_sum / b.B;
  out.log_ppl_abs_diff = abs_sum / b.B;
  out.log_ppl_diff_max = dmax;
  out.log_ppl_diff_min = dmin;
  out.ppl_ratio = ratio / b.B;
}

// J of verl for the batch at `logits`, with every stop-gradient value taken at `base_logits` (so
// that central differences in `logits` give verl's gradient, straight-through KL included). Every
// token is initial; b.rollout_logp is read by the rollout correction, b.selection (empty: none) is
// clip_cov's caller selection.
inline Result loss(const ref::Batch& b, const std::vector<double>& logits,
                   const std::vector<double>& base_logits, const cgrpo::LossConfig& c) {
  using cgrpo::PolicyLoss;
  const int64_t T = b.T;
  Result r;
  std::vector<double> logp(T), logp0(T), H(T), m(T);
  for (int64_t t = 0; t < T; ++t) {
    const ref::TokenValues v = ref::log_softmax_entropy(&logits[t * b.stride], b.V, b.targets[t], c.temperature);
    logp[t] = v.logp;
    H[t] = v.entropy;
    logp0[t] = ref::log_softmax_entropy(&base_logits[t * b.stride], b.V, b.targets[t], c.temperature).logp;
    m[t] = b.mask[t];
  }
  const bool bypass = c.off_policy.rollout.mode == cgrpo::RolloutCorrectionMode::bypass;
  const bool corrected = c.off_policy.rollout.mode != cgrpo::RolloutCorrectionMode::none;
  const std::vector<double>& old = bypass ? b.rollout_logp : b.old_logp;

  // Rollout correction: constants from the detached values.
  std::vector<double> w(T, 1.0), m_pg = m, m_other = m;
  r.keep.assign(T, 0);
  if (corrected) {
    rollout(b, c.off_policy.rollout, bypass ? logp0 : b.old_logp, b.rollout_logp, m, w, r.keep, r.rollout);
    for (int64_t t = 0; t < T; ++t) {
      m_pg[t] = r.keep[t];
      if (!bypass) m_other[t] = r.keep[t];
    }
  } else {
    for (int64_t t = 0; t < T; ++t) r.keep[t] = b.mask[t];
  }
  const bool weighted = corrected && c.off_policy.rollout.is_level != cgrpo::RolloutIsLevel::none &&
                        !(bypass && c.policy.loss == PolicyLoss::ppo_clip);

  // Per-token policy loss.
  std::vector<double> l(T, 0.0), clipped(T, 0.0), lower(T, 0.0), kl_metric(T, 0.0);
  std::vector<double> row_mean0(b.B, 0.0);
  for (int64_t i = 0; i < b.B; ++i) {
    double s = 0, n = 0;
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
      if (m_pg[t] != 0) s += logp0[t] - old[t], n += 1;
    row_mean0[i] = s / std::max(n, 1.0);
  }
  auto clamp = [](double v, double lo, double hi) { return std::min(std::max(v, lo), hi); };
  r.selected.assign(T, 0);
  if (c.policy.loss == PolicyLoss::kl_cov) {
    std::vector<int64_t> valid;
    double sa = 0, sl = 0;
    for (int64_t t = 0; t < T; ++t)
      if (m_pg[t] != 0) valid.push_back(t), sa += b.adv[t], sl += logp0[t];
    const double ma = sa / valid.size(), ml = sl / valid.size();
    std::vector<double> cov(T);
    for (int64_t t : valid) cov[t] = (b.adv[t] - ma) * (logp0[t] - ml);
    std::stable_sort(valid.begin(), valid.end(), [&](int64_t a, int64_t z) { return cov[a] > cov[z]; });
    const size_t k = std::max<size_t>(1, static_cast<size_t>(valid.size() * c.policy.kl_cov.ratio));
    for (size_t j = 0; j < k && j < valid.size(); ++j) r.selected[valid[j]] = 1;
  }
  for (int64_t i = 0; i < b.B; ++i)
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      const double A = b.adv[t], xt = logp[t] - old[t], x0 = logp0[t] - old[t];
      const bool seq = c.ratio.level == cgrpo::RatioLevel::sequence_detached;
      const double q = seq ? row_mean0[i] + logp[t] - logp0[t] : xt;
      const double ratio = std::exp(clamp(q, c.ratio.log_ratio_min, c.ratio.log_ratio_max));
      const double lo = 1 - c.ratio.clip_eps_low, hi = 1 + c.ratio.clip_eps_high;
      switch (c.policy.loss) {
        case PolicyLoss::ppo_clip:
        case PolicyLoss::clip_cov: {
          const double pg1 = -A * ratio, pg2 = -A * clamp(ratio, lo, hi);
          l[t] = std::max(pg1, pg2);
          clipped[t] = pg2 > pg1;
          if (c.ratio.dual_clip && A < 0) {
            lower[t] = l[t] > -A * c.ratio.dual_clip_c;
            l[t] = std::min(l[t], -A * c.ratio.dual_clip_c);
          }
          if (c.policy.loss == PolicyLoss::clip_cov && !b.selection.empty() && b.selection[t]) l[t] = 0;
          kl_metric[t] = seq ? -xt : -clamp(xt, c.ratio.log_ratio_min, c.ratio.log_ratio_max);
          break;
        }
        case PolicyLoss::cispo: {
          const double r0 = std::exp(clamp(x0, c.ratio.log_ratio_min, c.ratio.log_ratio_max));
          l[t] = -clamp(r0, lo, hi) * A * logp[t];
          clipped[t] = clamp(r0, lo, hi) != r0;
          kl_metric[t] = -clamp(xt, c.ratio.log_ratio_min, c.ratio.log_ratio_max);
          break;
        }
        case PolicyLoss::sapo: {
          const double tau = A > 0 ? c.policy.sapo.tau_pos : c.policy.sapo.tau_neg;
          l[t] = -A * 4.0 / tau / (1.0 + std::exp(-tau * (ratio - 1.0)));
          kl_metric[t] = -clamp(xt, c.ratio.log_ratio_min, c.ratio.log_ratio_max);
          break;
        }
        case PolicyLoss::gpg:
        case PolicyLoss::reinforce:
          l[t] = -A * logp[t];
          kl_metric[t] = -xt;
          break;
        case PolicyLoss::kl_cov:
          l[t] = -A * std::exp(xt) + (r.selected[t] ? c.policy.kl_cov.coef * std::fabs(xt) : 0.0);
          kl_metric[t] = std::fabs(xt);
          break;
        default: break;
      }
      if (weighted) l[t] *= w[t];
    }

  if (c.policy.loss == PolicyLoss::geo_mean) {
    double J = 0;
    for (int64_t i = 0; i < b.B; ++i) {
      double sy = 0, sa = 0, n = 0, slw = 0;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
        if (m_pg[t] == 0) continue;
        const double A = b.adv[t], xt = logp[t] - old[t];
        sy += A > 0 ? std::min(xt, c.ratio.clip_eps_high) : A < 0 ? std::max(xt, -c.ratio.clip_eps_low) : 0.0;
        sa += A;
        n += 1;
        slw += std::log(w[t] + 1e-10);
        const bool out_of_band = xt != clamp(xt, -c.ratio.clip_eps_low, c.ratio.clip_eps_high);
        clipped[t] = out_of_band && A > 0;
        lower[t] = out_of_band && A < 0;
        kl_metric[t] = -xt;
      }
      double li = -(sa / (n + 1e-8)) * std::exp(sy / (n + 1e-8));
      if (weighted) li *= std::exp(slw / (n + 1e-8));
      J += li;
    }
    r.pg = J / b.B;
  } else {
    r.pg = agg(c.aggregation.policy, c.aggregation.convention, b, l, m_pg, m_other);
  }
  std::vector<double> kl(T, 0.0);
  if (c.kl.estimator != cgrpo::KlEstimator::none)
    for (int64_t t = 0; t < T; ++t) {
      if (c.kl.straight_through) {
        const double k2 = 0.5 * std::pow(logp[t] - b.ref_logp[t], 2), k20 = 0.5 * std::pow(logp0[t] - b.ref_logp[t], 2);
        kl[t] = k2 - k20 + kl_estimator(c.kl.estimator, logp0[t], b.ref_logp[t]);
      } else {
        kl[t] = kl_estimator(c.kl.estimator, logp[t], b.ref_logp[t]);
      }
    }
  r.entropy_agg = agg(c.aggregation.entropy, c.aggregation.convention, b, H, m_other, m_other);
  r.kl_agg = c.kl.estimator == cgrpo::KlEstimator::none ? 0.0 : agg(c.aggregation.kl, c.aggregation.convention, b, kl, m_other, m_other);
  r.loss = r.pg - c.entropy.coef * r.entropy_agg + (c.kl.estimator == cgrpo::KlEstimator::none ? 0.0 : c.kl.coef * r.kl_agg);
  r.clipfrac = mmean(clipped, m_pg);
  r.clipfrac_lower = mmean(lower, m_pg);
  r.ppo_kl = mmean(kl_metric, m_pg);
  r.is_weight.assign(T, 0.0);
  for (int64_t t = 0; t < T; ++t) r.is_weight[t] = b.mask[t] ? (weighted ? w[t] : 1.0) : 0.0;
  return r;
}

// Central differences of J in every logit, stop-gradients held at b.logits.
inline std::vector<double> finite_difference_gradient(const ref::Batch& b, const cgrpo::LossConfig& c,
                                                      double h = 1e-6) {
  std::vector<double> g(b.logits.size(), 0.0), z = b.logits;
  for (int64_t t = 0; t < b.T; ++t)
    for (int64_t v = 0; v < b.V; ++v) {
      const size_t k = t * b.stride + v;
      const double z0 = z[k];
      z[k] = z0 + h;
      const double jp = loss(b, z, b.logits, c).loss;
      z[k] = z0 - h;
      const double jm = loss(b, z, b.logits, c).loss;
      z[k] = z0;
      g[k] = (jp - jm) / (2 * h);
    }
  return g;
}

}  // namespace ref_verl
