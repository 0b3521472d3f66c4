# R's MASS::glm.nb as the reference for mseval's NB2 fitter (tests/stats/test_count_model.py).
#   Rscript r_glm_nb.R export OUTDIR      writes R's own count data sets as CSV:
#       epil.csv       MASS::epil (Thall and Vail 1990) per-patient totals of the 4 two-week periods:
#                      y, trt (placebo/progabide), lbase = log(base / 4), age, years = 8 weeks in years
#       quine.csv      MASS::quine as shipped (Days, Eth, Sex, Age, Lrn)
#       insurance.csv  MASS::Insurance with unordered factors recoded d1-d4, g1-g4, a1-a4 (R's ordered
#                      factors would get polynomial contrasts): Claims, District, Group, Age, Holders
#   Rscript r_glm_nb.R fit JOBS.csv       fits every job (columns id, data, formula: an R formula,
#                      offset included; factor, reference: the reference level of that column) with glm.nb(control = glm.control(epsilon = 1e-12, maxit = 500))
#                      and glm(family = poisson) and writes one row per model and coefficient to stdout:
#                      id, model, status, term, coef, se, p_value, theta, loglik, r_version, mass_version.
suppressMessages(library(MASS))
args <- commandArgs(trailingOnly = TRUE)
if (args[1] == "export") {
  out <- args[2]
  e <- MASS::epil
  tot <- aggregate(y ~ subject, data = e, FUN = sum)
  first <- e[e$period == 1, c("subject", "trt", "base", "age")]
  ep <- merge(tot, first, by = "subject")
  ep <- data.frame(y = ep$y, trt = as.character(ep$trt), lbase = log(ep$base / 4), age = ep$age, years = 8 / (365.25 / 7))
  write.csv(ep, file.path(out, "epil.csv"), row.names = FALSE)
  write.csv(MASS::quine, file.path(out, "quine.csv"), row.names = FALSE)
  ins <- MASS::Insurance
  ins <- data.frame(Claims = ins$Claims, District = paste0("d", as.integer(ins$District)), Group = paste0("g", as.integer(ins$Group)),
                    Age = paste0("a", as.integer(ins$Age)), Holders = ins$Holders)
  write.csv(ins, file.path(out, "insurance.csv"), row.names = FALSE)
} else if (args[1] == "fit") {
  jobs <- read.csv(args[2], stringsAsFactors = FALSE)
  res <- NULL
  for (i in seq_len(nrow(jobs))) {
    d <- read.csv(jobs$data[i], stringsAsFactors = TRUE)
    if (!is.na(jobs$factor[i]) && nchar(jobs$factor[i]) > 0) d[[jobs$factor[i]]] <- relevel(factor(d[[jobs$factor[i]]]), ref = jobs$reference[i])
    f <- as.formula(jobs$formula[i])
    # glm.nb can stop with an error near the Poisson boundary (theta.ml's Newton running off to
    # infinity): recorded as model "glm.nb" with status "error"; the Poisson GLM is always fitted too,
    # the reference where the maximum is at alpha = 0.
    nb <- tryCatch(suppressWarnings(glm.nb(f, data = d, control = glm.control(epsilon = 1e-12, maxit = 500))), error = function(e) e)
    po <- glm(f, data = d, family = poisson, control = glm.control(epsilon = 1e-12, maxit = 500))
    for (m in c("glm.nb", "poisson")) {
      fit <- if (m == "glm.nb") nb else po
      if (inherits(fit, "error")) {
        res <- rbind(res, data.frame(id = jobs$id[i], model = m, status = "error", term = NA, coef = NA, se = NA, p_value = NA, theta = NA,
                                     loglik = NA, r_version = paste(R.version$major, R.version$minor, sep = "."),
                                     mass_version = as.character(packageVersion("MASS"))))
        next
      }
      s <- summary(fit)$coefficients
      theta <- if (m == "glm.nb") fit$theta else Inf
      ll <- if (m == "glm.nb") fit$twologlik / 2 else as.numeric(logLik(fit))
      res <- rbind(res, data.frame(id = jobs$id[i], model = m, status = "ok", term = rownames(s), coef = s[, 1], se = s[, 2], p_value = s[, 4],
                                   theta = theta, loglik = ll, r_version = paste(R.version$major, R.version$minor, sep = "."),
                                   mass_version = as.character(packageVersion("MASS"))))
    }
  }
  write.csv(res, stdout(), row.names = FALSE)
}
