# R references for the multi-visit analyses of mseval (tests/stats/test_gee.py, tests/stats/test_visit_endpoints.py).
#   Rscript r_visits.R gee DATA.csv CORSTRS     geepack::geeglm(net2 ~ arm + age + offset(log(years)), family = poisson,
#                      id = patient_id, waves = visit_index, corstr = each of CORSTRS (comma-separated: exchangeable,ar1),
#                      control = geese.control(epsilon = 1e-13, maxit = 500)); data sorted by patient_id, visit_index,
#                      arm's reference level 'placebo'. Writes corstr, term, coef, se (robust, san.se), then the rows
#                      'alpha' (working correlation) and 'scale' (geepack's phi) in column coef.
#   Rscript r_visits.R cloglog DATA.csv         glm(event ~ interval + arm + age + offset(log(years)),
#                      family = binomial(link = "cloglog"), control = glm.control(epsilon = 1e-14, maxit = 100)),
#                      refitted twice from its own solution (glm's deviance criterion stops short of the optimum);
#                      interval's reference level is the first visit, arm's 'placebo'. Writes corstr (empty), term, coef, se.
# Numbers are printed with 17 significant digits.
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[2], stringsAsFactors = FALSE)
d$arm <- relevel(factor(d$arm), "placebo")
out <- NULL
if (args[1] == "gee") {
  suppressMessages(library(geepack))
  d$patient_id <- factor(d$patient_id, levels = unique(d$patient_id))
  for (cs in strsplit(args[3], ",")[[1]]) {
    m <- geeglm(net2 ~ arm + age + offset(log(years)), family = poisson, data = d, id = patient_id, waves = visit_index,
                corstr = cs, control = geese.control(epsilon = 1e-13, maxit = 500))
    s <- summary(m)
    one <- data.frame(term = names(coef(m)), coef = unname(coef(m)), se = unname(s$coefficients[, "Std.err"]))
    one <- rbind(one, data.frame(term = c("alpha", "scale"), coef = c(m$geese$alpha[[1]], m$geese$gamma[[1]]), se = NA))
    out <- rbind(out, cbind(corstr = cs, one))
  }
} else if (args[1] == "cloglog") {
  d$interval <- factor(d$interval, levels = unique(d$interval[order(d$visit_index)]))
  # glm stops on the deviance, which is flat at the optimum: it can stop 1e-8 (relative) short of the maximum.
  # Two more Fisher-scoring passes from its own solution reach it (score ~1e-12).
  start <- NULL
  for (pass in 1:3) {
    m <- glm(event ~ interval + arm + age + offset(log(years)), family = binomial(link = "cloglog"), data = d,
             start = start, control = glm.control(epsilon = 1e-14, maxit = 100))
    start <- coef(m)
  }
  s <- summary(m)$coefficients
  out <- data.frame(corstr = "", term = rownames(s), coef = s[, 1], se = s[, 2])
}
out$coef <- sprintf("%.17g", out$coef)
out$se <- sprintf("%.17g", out$se)
write.csv(out, stdout(), row.names = FALSE, quote = FALSE)
