# Reference fits from R's MASS::glm.nb for tests/stats/test_count_model.py.
# Run: Rscript tests/stats/data/make_r_reference.R tests/stats/data/nb_trial.csv > tests/stats/data/nb_trial_r.csv
suppressMessages(library(MASS))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
d$arm <- relevel(factor(d$arm), ref = "placebo")
out <- NULL
for (f in c("net2 ~ arm", "net2 ~ arm + age + gd_count + t2_volume_mm3")) {
  fit <- glm.nb(as.formula(paste(f, "+ offset(log(followup_years))")), data = d, control = glm.control(epsilon = 1e-12, maxit = 200))
  s <- summary(fit)$coefficients
  out <- rbind(out, data.frame(formula = f, term = rownames(s), coef = s[, 1], se = s[, 2], theta = fit$theta,
                               r_version = paste(R.version$major, R.version$minor, sep = "."),
                               mass_version = as.character(packageVersion("MASS"))))
}
write.csv(out, stdout(), row.names = FALSE)
