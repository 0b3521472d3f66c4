"""A statistical analysis plan (SAP) as a file: read and checked (`schema`), the default plan of an
MS MRI trial (`default`), named covariate transforms (`covariates`), and its execution (`runner`)."""
