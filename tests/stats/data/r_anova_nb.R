# R's anova(m0, m1) on MASS::glm.nb fits: the reference for mseval.stats.small_sample's LRT
# (tests/stats/test_small_sample.py).
#   Rscript r_anova_nb.R JOBS.csv    JOBS columns: id, data (CSV path), full, null (R formulas, offsets
#   included), factors (";"-separated columns made factors), reference (their reference levels, ";").
#   Writes id, lr_stat, p_value, df, theta1, theta0, twologlik1, twologlik0 per job to stdout;
#   fits with glm.control(epsilon = 1e-12, maxit = 500).
suppressMessages(library(MASS))
args <- commandArgs(trailingOnly = TRUE)
jobs <- read.csv(args[1], stringsAsFactors = FALSE)
res <- NULL
ctl <- glm.control(epsilon = 1e-12, maxit = 500)
for (i in seq_len(nrow(jobs))) {
  d <- read.csv(jobs$data[i], stringsAsFactors = TRUE)
  fs <- strsplit(jobs$factors[i], ";")[[1]]
  refs <- strsplit(jobs$reference[i], ";")[[1]]
  for (k in seq_along(fs)) d[[fs[k]]] <- relevel(factor(as.character(d[[fs[k]]])), ref = refs[k])
  m1 <- suppressWarnings(glm.nb(as.formula(jobs$full[i]), data = d, control = ctl))
  m0 <- suppressWarnings(glm.nb(as.formula(jobs$null[i]), data = d, control = ctl))
  a <- anova(m0, m1)
  res <- rbind(res, data.frame(id = jobs$id[i], lr_stat = a[[7]][2], p_value = a[[8]][2], df = a[[6]][2], theta1 = m1$theta, theta0 = m0$theta,
                               twologlik1 = m1$twologlik, twologlik0 = m0$twologlik))
}
write.csv(res, stdout(), row.names = FALSE)
