"""HTML reports and plots shared by every step."""
