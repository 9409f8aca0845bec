"""Studies: research questions answered with the product's own trainer and evaluator (never a copy of
them); each study is a folder with its README, its code and one results file."""
