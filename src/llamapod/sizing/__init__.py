"""Sizing a job before it runs (torch-free): memory per GPU, and whether it fits."""
