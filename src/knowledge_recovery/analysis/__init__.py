"""Analysis of finished cells: paired statistics, the summary tables and plots, forgotten vs
displaced, and representations against the dense model. Imports neither evaluation nor
compression: it reads what they wrote."""
