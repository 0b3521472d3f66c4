# R's glmmTMB as the reference for mseval's NB2 with a dispersion per arm (tests/stats/test_nb2_by_arm.py).
#   Rscript r_glmmtmb.R JOBS.csv   fits every job (columns id, data: a CSV path, formula: an R formula with its
#                                  offset; optional column dispformula, default ~ arm; arm releveled to "placebo") with
#                                  glmmTMB(family = nbinom2, dispformula) and writes one row per
#                                  coefficient to stdout: id, part (cond / disp), term, coef, se, loglik,
#                                  max_gradient (largest |gradient| at glmmTMB's optimum), pdHess, r_version, glmmtmb_version,
#                                  for fit = "glmmTMB" (as glmmTMB reports it) and fit = "newton" (glmmTMB's own objective
#                                  and Hessian, m$obj$fn / gr / he, polished by Newton steps from its optimum until the
#                                  largest |gradient| is below 1e-9; SEs from TMB::sdreport at that point).
# nbinom2 in glmmTMB: Var = mu + mu^2 / phi, log phi = disp's linear predictor (phi = theta = 1 / alpha).
suppressMessages(library(glmmTMB))
args <- commandArgs(trailingOnly = TRUE)
jobs <- read.csv(args[1], stringsAsFactors = FALSE)
res <- NULL
for (i in seq_len(nrow(jobs))) {
  d <- read.csv(jobs$data[i], stringsAsFactors = TRUE)
  if ("arm" %in% names(d)) d$arm <- relevel(factor(d$arm), ref = "placebo")
  ctl <- glmmTMBControl(optCtrl = list(iter.max = 10000, eval.max = 10000, rel.tol = 1e-14, x.tol = 1e-14))
  disp <- if ("dispformula" %in% names(jobs)) jobs$dispformula[i] else "~ arm"
  m <- glmmTMB(as.formula(jobs$formula[i]), dispformula = as.formula(disp), family = nbinom2, data = d, control = ctl)
  s <- summary(m)$coefficients
  grad <- max(abs(m$sdr$gradient.fixed))
  par <- m$fit$par
  for (it in 1:20) {
    g <- m$obj$gr(par)
    if (max(abs(g)) < 1e-9) break
    par <- par - solve(m$obj$he(par), as.numeric(g))
  }
  sdr <- TMB::sdreport(m$obj, par.fixed = par)
  est <- sdr$par.fixed
  se_n <- sqrt(diag(sdr$cov.fixed))
  for (part in c("cond", "disp")) {
    tab <- s[[part]]
    key <- if (part == "cond") "beta" else "betad"
    sel <- names(est) == key
    common <- data.frame(id = jobs$id[i], part = part, term = rownames(tab), pdHess = m$sdr$pdHess,
                         r_version = paste(R.version$major, R.version$minor, sep = "."),
                         glmmtmb_version = as.character(packageVersion("glmmTMB")))
    res <- rbind(res, cbind(common, fit = "glmmTMB", coef = tab[, 1], se = tab[, 2], loglik = as.numeric(logLik(m)), max_gradient = grad),
                 cbind(common, fit = "newton", coef = est[sel], se = se_n[sel], loglik = -m$obj$fn(par),
                       max_gradient = max(abs(m$obj$gr(par)))))
  }
}
write.csv(res, stdout(), row.names = FALSE)
